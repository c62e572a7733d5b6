"""The fixed mapping from calibrated fraud probability to a 0-99 score and a band.

The mapping never depends on a model version, so a rule such as "review if
score >= 80" keeps its meaning across promotions:

    score = clip(floor(25 * (log10(p) + 4)), 0, 99)

Every 25 points is ten times the probability: p = 0.01% scores 0, 0.1% scores
25, 1% scores 50, 10% scores 75 and 50% scores 92.
"""

from __future__ import annotations

import math

import numpy as np

DECISIONS: tuple[str, ...] = ("approve", "challenge", "review", "decline")
FRAUD_BANDS: tuple[tuple[int, str], ...] = (
    (90, "very_high"),
    (75, "high"),
    (50, "medium"),
    (0, "low"),
)
_FLOOR_P = 1e-12


def fraud_score(probability: float) -> int:
    """The 0-99 score of one calibrated probability."""
    p = min(max(float(probability), _FLOOR_P), 1.0)
    return int(min(99, max(0, math.floor(25.0 * (math.log10(p) + 4.0)))))


def fraud_scores(probabilities: np.ndarray) -> np.ndarray:
    """Vectorised `fraud_score`; equal to it element by element."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _FLOOR_P, 1.0)
    return np.clip(np.floor(25.0 * (np.log10(p) + 4.0)), 0, 99).astype(np.int64)


def fraud_band(score: int) -> str:
    for floor, name in FRAUD_BANDS:
        if score >= floor:
            return name
    return "low"


def decide(probability: float, thresholds: dict[str, float]) -> str:
    """The model's own decision from its thresholds on calibrated probability."""
    if probability >= thresholds["decline"]:
        return "decline"
    if probability >= thresholds["review"]:
        return "review"
    if probability >= thresholds["challenge"]:
        return "challenge"
    return "approve"


def decide_many(probabilities: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """Vectorised `decide`, as indexes into DECISIONS."""
    p = np.asarray(probabilities, dtype=np.float64)
    out = np.zeros(len(p), dtype=np.int8)
    out[p >= thresholds["challenge"]] = 1
    out[p >= thresholds["review"]] = 2
    out[p >= thresholds["decline"]] = 3
    return out
