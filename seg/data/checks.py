"""What readers say about cases they could not use or did not find as the release describes them:
one warning per kind per dataset, at every start (the notes live in the cache entry, so a run that
reuses the cache warns as the run that built it did)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

log = logging.getLogger("seg.data")

LISTED_PER_REASON = 10
EXAMPLES = 5


def summarise(skipped: Mapping[str, Sequence[str]]) -> str:
    """One line per reason, long lists cut with a count, so the warning stays readable."""
    lines = []
    for reason, names in skipped.items():
        shown = ", ".join(names[:LISTED_PER_REASON])
        more = f" ... and {len(names) - LISTED_PER_REASON} more" if len(names) > LISTED_PER_REASON else ""
        lines.append(f"  {reason} ({len(names)}): {shown}{more}")
    return "\n".join(lines)


def by_reason(skipped: Mapping[str, tuple[str, str]]) -> dict[str, list[str]]:
    """{case: (reason, detail)} -> {reason: [detail, ...]}, in case order."""
    grouped: dict[str, list[str]] = {}
    for reason, detail in skipped.values():
        grouped.setdefault(reason, []).append(detail)
    return grouped


def report_skipped(name: str, root: Any, skipped: Mapping[str, Sequence[str]]) -> None:
    if skipped:
        total = sum(len(v) for v in skipped.values())
        log.warning("%s under %s: skipped %d case(s) that could not be decoded:\n%s", name, root, total,
                    summarise(skipped))


def report_mask_values(name: str, notes: Mapping[str, Mapping[str, Any]], total: int, expected: str,
                       treatment: str) -> None:
    """One warning for every mask whose stored values are not the release's (`notes[case]["mask_values"]`
    lists the values each holds): how many, which values, a few cases, and how they were read."""
    cases = [case for case, note in notes.items() if "mask_values" in note]
    if not cases:
        return
    values = sorted({v for case in cases for v in notes[case]["mask_values"]})
    more = f", ... ({len(cases) - EXAMPLES} more)" if len(cases) > EXAMPLES else ""
    log.warning(
        "%s: %d of %d mask(s) hold values other than %s: values %s found (in %s%s); %s",
        name, len(cases), total, expected, values, ", ".join(cases[:EXAMPLES]), more, treatment,
    )
