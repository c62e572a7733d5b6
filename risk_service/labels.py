"""Feedback labels: what became known about a decided event, when, and from whom.

A label is history, not a field to overwrite: a chargeback may be followed by an
analyst's reversal, and training as of T must see what was known at T. The log
keeps every label; readers take, per event and label name, the one with the
latest ``label_time_ms`` known by their cut-off (``latest_label``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

LABEL_NAMES: tuple[str, ...] = ("is_fraud", "defaulted")
LABEL_SOURCES: tuple[str, ...] = ("chargeback", "customer_report", "analyst", "collections")


@dataclass(frozen=True)
class LabelRecord:
    """One label for one event: ``value`` 1 (fraud / defaulted) or 0, known at ``label_time_ms``.

    ``received_at_ms`` is when the service received it. A redelivery of the same label
    (same event, name, value, label time and source) is the same label whatever its
    ``received_at_ms``: the log keeps the first receipt.
    """

    event_id: str
    label: str
    value: int
    label_time_ms: int
    source: str
    received_at_ms: int

    def __post_init__(self) -> None:
        if not isinstance(self.event_id, str) or not self.event_id:
            raise ValueError(f"event_id must be a non-empty string, got {self.event_id!r}")
        if self.label not in LABEL_NAMES:
            raise ValueError(f"label must be one of {', '.join(LABEL_NAMES)}, got {self.label!r}")
        if self.value not in (0, 1) or not isinstance(self.value, int):
            raise ValueError(f"value must be 0 or 1, got {self.value!r}")
        if self.source not in LABEL_SOURCES:
            raise ValueError(
                f"source must be one of {', '.join(LABEL_SOURCES)}, got {self.source!r}"
            )
        for name in ("label_time_ms", "received_at_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer (ms), got {value!r}")
        object.__setattr__(self, "value", int(self.value))  # True -> 1: one type in storage

    def key(self) -> tuple[str, str, int, int, str]:
        """What makes two labels the same label (``received_at_ms`` excluded)."""
        return (self.event_id, self.label, self.value, self.label_time_ms, self.source)


def sort_labels(labels: Iterable[LabelRecord]) -> list[LabelRecord]:
    """Labels in the order the log returns them: label time, then receipt time."""
    return sorted(labels, key=lambda x: (x.label_time_ms, x.received_at_ms, x.source, x.value))


def latest_label(
    labels: Iterable[LabelRecord], label: str, *, known_by_ms: int | None = None
) -> LabelRecord | None:
    """The label in force: the latest ``label_time_ms`` (<= ``known_by_ms`` when given)."""
    best: LabelRecord | None = None
    for candidate in sort_labels(labels):
        if candidate.label != label:
            continue
        if known_by_ms is not None and candidate.label_time_ms > known_by_ms:
            continue
        best = candidate
    return best


__all__ = ["LABEL_NAMES", "LABEL_SOURCES", "LabelRecord", "latest_label", "sort_labels"]
