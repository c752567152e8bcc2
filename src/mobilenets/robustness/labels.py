"""What a robustness figure is called, from what was measured: the number of corruptions and the severities.

Hendrycks & Dietterich (ICLR 2019) define CE_c over all five severities and mCE as the mean of CE_c over
the 15 common corruptions. A figure from fewer severities is not an mCE, and one from fewer corruptions
does not compare with a full one, so every label states what it averages (the robustness report, the
command's summary line and the run's report.html all use these functions).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mobilenets.robustness.corruptions import CORRUPTIONS, HELD_OUT_CORRUPTIONS, SEVERITIES

MCE_NEEDS = "mCE needs severities 1–5"


def is_mce(severities: Iterable[int | str]) -> bool:
    """Whether errors summed over these severities are CE as defined: all five of them."""
    return sorted(int(s) for s in severities) == list(SEVERITIES)


def severities_text(severities: Sequence[int | str]) -> str:
    """``[3]`` → "severity 3"; ``[1, 2, 3, 4, 5]`` → "severities 1–5"; ``[1, 3, 5]`` → "severities 1, 3, 5"."""
    values = sorted(int(s) for s in severities)
    if len(values) == 1:
        return f"severity {values[0]}"
    if values == list(range(values[0], values[-1] + 1)):
        return f"severities {values[0]}–{values[-1]}"
    return "severities " + ", ".join(str(v) for v in values)


def corruptions_text(names: Iterable[str], held_out: bool = False) -> str:
    """How many of the common (or held-out) corruptions ``names`` covers: "the 15 common corruptions",
    "3 of the 15 common corruptions", "1 of the 4 held-out corruptions"."""
    group = HELD_OUT_CORRUPTIONS if held_out else CORRUPTIONS
    kind = "held-out" if held_out else "common"
    count = sum(name in group for name in names)
    if count == len(group):
        return f"the {len(group)} {kind} corruptions"
    return f"{count} of the {len(group)} {kind} corruption{'s' if len(group) > 1 else ''}"


def scope_text(names: Iterable[str], severities: Sequence[int | str], held_out: bool = False) -> str:
    """ "3 of the 15 common corruptions, severity 3": what a mean over the corruptions measured covers."""
    return f"{corruptions_text(names, held_out)}, {severities_text(severities)}"


def ce_label(
    names: Iterable[str], severities: Sequence[int | str], *, relative: bool = False, held_out: bool = False
) -> str:
    """The name of a mean corruption error: mCE only over all five severities, else what it is."""
    prefix = "relative " if relative else ""
    if is_mce(severities):
        return f"{prefix}mCE over {corruptions_text(names, held_out)}"
    return (
        f"{prefix}mean CE over {scope_text(names, severities, held_out)} (not {prefix}mCE: that needs severities 1–5)"
    )


def ce_column(severities: Sequence[int | str]) -> str:
    """The heading of the per-corruption CE column: CE_c is defined over all five severities."""
    return "CE" if is_mce(severities) else f"CE ({severities_text(severities)} only)"


def ce_short(names: Iterable[str], severities: Sequence[int | str]) -> tuple[str, str]:
    """(name, scope) for a one-line summary: ("mCE", "the 15 common corruptions") or ("mean CE", "3 of the
    15 common corruptions, severity 3 only; mCE needs severities 1–5")."""
    if is_mce(severities):
        return "mCE", corruptions_text(names)
    return "mean CE", f"{scope_text(names, severities)} only; {MCE_NEEDS}"
