"""The credit model at inference agrees with the training code's definitions."""

from __future__ import annotations

import numpy as np
import pytest

from risk_service import credit_model as online
from training import credit as offline


@pytest.mark.parametrize("pd_", [1e-4, 0.01, 0.0196, 0.05, 0.2, 0.5, 0.9])
def test_points_follow_the_same_pdo_scale(pd_: float) -> None:
    assert online.score_from_pd(pd_) == pytest.approx(float(offline.score_from_pd(pd_)), abs=1e-9)


def test_600_points_at_50_to_1_and_20_points_to_double_the_odds() -> None:
    assert online.score_from_pd(1 / 51) == pytest.approx(600.0)
    assert online.score_from_pd(1 / 101) == pytest.approx(620.0)


def test_recommended_limit_is_the_training_rule() -> None:
    rng = np.random.default_rng(0)
    for pd_, income, requested in zip(
        rng.uniform(0, 0.5, 200),
        rng.uniform(0, 20_000, 200),
        rng.uniform(0, 50_000, 200),
        strict=True,
    ):
        expected = float(offline.recommended_limit(pd_, income, requested))
        assert online.recommended_limit(pd_, income, requested) == expected
    assert online.recommended_limit(0.01, None, 1000.0) == 0.0
    assert online.recommended_limit(0.01, float("nan"), 1000.0) == 0.0
