"""KEY=VALUE arguments for rl-eval and rl-collect: typed, checked, one line per mistake, exit 2."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from rl_runner.config import check_value
from rl_runner.errors import UserError


@dataclass
class Option:
    default: Any
    type: Any  # a type hint, checked with rl_runner.config.check_value
    help: str


def parse_options(argv: list[str], options: dict[str, Option]) -> dict[str, Any]:
    """{key: value} for every option; values are read as YAML scalars (20, true, null)."""
    values = {key: opt.default for key, opt in options.items()}
    for arg in argv:
        key, sep, raw = arg.partition("=")
        if not sep:
            raise UserError(f"{arg!r} is not KEY=VALUE; keys: {', '.join(options)}")
        if key not in options:
            raise UserError(f"unknown key {key!r}; allowed: {', '.join(options)}")
        expected = options[key].type
        try:
            value = raw if expected is str else yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        check_value(key, value, expected)
        values[key] = value
    return values


def usage(prog: str, summary: str, options: dict[str, Option]) -> str:
    width = max(map(len, options)) + 2
    lines = [f"usage: {prog} KEY=VALUE ...", "", summary, ""]
    lines += [f"  {key:<{width}}{opt.help} (default: {opt.default})"
              for key, opt in options.items()]
    return "\n".join(lines)


def run_tool(prog: str, summary: str, options: dict[str, Option],
             action: Callable[[dict[str, Any]], Any], argv: list[str] | None = None) -> None:
    """Parse argv, run `action`; bad input prints one line `prog: error: ...` and exits 2."""
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(usage(prog, summary, options))
        return
    try:
        action(parse_options(argv, options))
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
