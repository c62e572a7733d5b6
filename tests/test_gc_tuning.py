"""The service's garbage-collector settings: short young collections, no pause that grows
with the state (`risk_service.service.tune_gc`)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from risk_service.service import YOUNG_GC_THRESHOLD, tune_gc


@pytest.fixture
def tuned_gc() -> Iterator[list[tuple[int, int]]]:
    """tune_gc applied; yields (generation, objects collected) of each collection after it."""
    thresholds = gc.get_threshold()
    seen: list[tuple[int, int]] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            seen.append((info["generation"], info["collected"]))

    tune_gc()
    gc.callbacks.append(record)
    try:
        yield seen
    finally:
        gc.callbacks.remove(record)
        gc.unfreeze()
        gc.set_threshold(*thresholds)


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def test_a_growing_state_triggers_only_young_collections(tuned_gc: list[tuple[int, int]]) -> None:
    # like the feature state: containers that stay alive, 30x the young threshold
    state = [[i] for i in range(30 * YOUNG_GC_THRESHOLD)]
    assert len(state) == 30 * YOUNG_GC_THRESHOLD
    generations = [generation for generation, _ in tuned_gc]
    # CPython's defaults would have collected generation 1 here (every 10th collection)
    assert len(generations) >= 25
    assert set(generations) == {0}


def test_young_cycles_are_still_freed(tuned_gc: list[tuple[int, int]]) -> None:
    a, b = Node(), Node()
    a.other, b.other = b, a
    alive = weakref.ref(a)
    del a, b
    filler = [[i] for i in range(2 * YOUNG_GC_THRESHOLD)]  # allocations past the threshold
    assert filler
    assert alive() is None
    assert any(collected >= 2 for _, collected in tuned_gc)


def test_objects_alive_at_startup_are_frozen(tuned_gc: list[tuple[int, int]]) -> None:
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == YOUNG_GC_THRESHOLD
