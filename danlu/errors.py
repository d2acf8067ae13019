"""The one error type users see.

Anything a user can fix (a bad key, a missing column, an unreadable file) raises
DanluError with a one-line message naming what is at fault and what would be valid.
The CLI prints it as one line and exits with code 2; `--debug` shows the traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DanluError(Exception):
    """A problem the user can act on. The message is one line."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a near miss, else ''."""
    match = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


def choose_from(value: object, choices: Iterable[str], what: str) -> DanluError:
    """Error for an invalid choice, listing the valid ones."""
    choices = sorted(str(c) for c in choices)
    return DanluError(
        f"unknown {what} '{value}'{did_you_mean(str(value), choices)}; valid: {', '.join(choices)}"
    )


def one_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, cut to `limit` characters (a library's multi-line
    error inside a DanluError)."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
