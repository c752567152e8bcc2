"""The one exception type users see: its message names the file or argument, the problem and the fix."""

from __future__ import annotations

import math


class MobilenetsError(Exception):
    """Raised for bad input (files, folders, arguments); the CLI prints it as one line, no traceback."""


class ModelArgumentError(MobilenetsError, ValueError):
    """An argument of create_model, get_architecture, MobileNet or save_weights that cannot be used.

    Also a ValueError: these functions raised ValueError for an unknown model, a bad width or an unknown
    option before, and callers that catch it must keep working.
    """


def check_number(
    flag: str,
    value: object,
    *,
    above: float | None = None,
    at_least: float | None = None,
    whole: bool = False,
    example: float | str | None = None,
) -> None:
    """One line naming ``flag`` unless ``value`` is None or a finite number within the bound.

    NaN passes no comparison and infinity ends no sampler or budget, so both are refused by every check,
    whatever its bound. ``above`` is a strict lower bound, ``at_least`` an inclusive one; ``whole`` asks
    for an int (a count of images or epochs; ``True`` is not one).
    """
    if value is None:
        return
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    is_whole = is_number and isinstance(value, int)
    fits = (
        (is_whole or (is_number and not whole and math.isfinite(value)))
        and (above is None or value > above)
        and (at_least is None or value >= at_least)
    )
    if not fits:
        shown = f"{value:g}" if is_number else repr(value)
        bound = f" > {above:g}" if above is not None else f" ≥ {at_least:g}" if at_least is not None else ""
        kind = "a whole number" if whole else "a finite number"
        hint = f", e.g. {flag} {example}" if example is not None else ""
        raise MobilenetsError(f"{flag} {shown}: give {kind}{bound}{hint}")


def split_items(text: str, option: str, *, what: str, example: str) -> list[str]:
    """The comma-separated items of ``text``, stripped. Nothing at all, or an empty item (``a,,b``, a
    trailing comma), is refused in one line rather than dropped; the options that take comma-separated lists
    (``--batch``, ``--models``, ``--widths``, ``--resolutions``, ``--corruptions``, ``--export``) share it."""
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        raise MobilenetsError(f"{option} {text!r}: give at least one value, e.g. {example}")
    if "" in parts:
        raise MobilenetsError(f"{option} {text!r}: an empty item; give comma-separated {what}, e.g. {example}")
    return parts
