"""The one exception type for bad input: the CLI turns it into one line and exit code 2."""


class UserError(Exception):
    """Bad input from the user (config value, path, env id): reported as one line, exit code 2."""


def describe(e: BaseException) -> str:
    """An error for results.json: bad input as its one line, anything else with its type."""
    return str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"


def one_line(e: BaseException, limit: int | None = None) -> str:
    """An exception's message on one line (Hydra's and OmegaConf's span several), at most
    `limit` characters."""
    text = " ".join(str(e).split())
    return text if limit is None else text[:limit]
