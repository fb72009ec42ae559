"""Marked sections of docs/benchmarks.md (<!-- name:start --> ... <!-- name:end -->)."""
from __future__ import annotations

from pathlib import Path


def read_section(path: Path, start: str, end: str) -> str:
    """The section's current text between its markers, or "" where it is not there yet."""
    text = path.read_text() if path.exists() else ""
    return text[text.index(start):text.index(end)] if start in text and end in text else ""


def replace_section(path: Path, start: str, end: str, body: str) -> None:
    """Put `body` between the markers, in place, or append the section at the end."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
