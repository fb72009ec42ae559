"""The one exception type for bad input: the CLI turns it into one line and exit code 2."""


class UserError(Exception):
    """Bad input from the user (config value, path, env id): reported as one line, exit code 2."""


def describe(e: BaseException) -> str:
    """An error for results.json: bad input as its one line, anything else with its type."""
    return str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
