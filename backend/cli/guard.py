"""The push-fatigue guard as ``openmfa user show`` prints it."""

from __future__ import annotations

from backend.cli.output import when
from backend.domain.fatigue import GuardDecision, duration_text, explain


def guard_lines(decision: GuardDecision, label_width: int = 15) -> list[str]:
    """``pushes:`` with the counts in the window, then one ``pushes muted:`` line per rule
    that stops pushes now (the one lasting longest first), with until when and why."""
    window = duration_text(decision.window_seconds)
    counts = (
        f"{decision.pushes_in_window} in the last {window}, "
        f"{decision.refused_in_window} of them denied or unanswered"
    )
    if decision.most_denies_by_one_device:
        counts += f", one device denied {decision.most_denies_by_one_device}"
    lines = [f"{'pushes:':<{label_width}}{counts}"]
    deciding = decision.deciding
    stops = sorted(decision.stops, key=lambda stop: stop is not deciding)
    for stop in stops:
        until = "until reviewed" if stop.until is None else f"until {when(stop.until)}"
        reason = explain(stop, decision.window_seconds)
        lines.append(f"{'pushes muted:':<{label_width}}{until} ({stop.reason.value}: {reason})")
    if deciding is not None:
        lines.append(f"{'':<{label_width}}sign-ins meanwhile need a code from the app")
    return lines
