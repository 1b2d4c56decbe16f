"""Argument checks shared by every public call: whole numbers, and text that is valid Unicode."""

from __future__ import annotations

from typing import Any

from .errors import ArgumentError

SQLITE_MAX_INT = 2 ** 63 - 1  # the largest LIMIT or OFFSET SQLite takes


def whole_number(name: str, value: Any, minimum: int = 0, maximum: int | None = SQLITE_MAX_INT) -> int:
    """``value`` if it is an int (not a bool) from ``minimum`` to ``maximum``; ArgumentError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        too_big = isinstance(value, int) and maximum is not None and value > maximum
        bound = f"from {minimum:,} to {maximum:,}" if maximum is not None and (maximum < SQLITE_MAX_INT or too_big) else f"of {minimum} or more"
        raise ArgumentError(name, f"must be a whole number {bound}, got {value!r}")
    return value


def optional_whole_number(name: str, value: Any, minimum: int = 0, maximum: int | None = SQLITE_MAX_INT) -> int | None:
    """``whole_number``, with None allowed (meaning no bound)."""
    return None if value is None else whole_number(name, value, minimum, maximum)


def unicode_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored or tokenised (a lone surrogate, a NUL), or None when it can."""
    if "\x00" in text:
        return "contains a NUL character; remove it"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"contains {text[err.start]!r} at position {err.start}, a lone surrogate that is not valid Unicode "
                f"(often bytes that were not UTF-8, e.g. a file name or command-line argument); pass UTF-8 text")
    return None


def text_argument(name: str, value: Any, required: bool = True) -> str | None:
    """``value`` if it is non-empty, valid Unicode text (None allowed unless ``required``); ArgumentError otherwise."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ArgumentError(name, f"must be non-empty text, got {value!r}")
    problem = unicode_problem(value)
    if problem:
        raise ArgumentError(name, problem)
    return value
