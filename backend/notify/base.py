"""What the challenge service tells once a fraud report is committed."""

from __future__ import annotations

from typing import Protocol


class FraudNotifier(Protocol):
    """Schedules the notice of a stored fraud report and returns at once: sending (and
    retrying) never delays the answer that filed the report."""

    def report_filed(self, report_id: int) -> None:
        """Notify about fraud report ``report_id`` in the background."""
        ...
