"""The fraud half of `risk train`: split by time honouring label time, fit, price, evaluate.

Time rules (see docs/architecture.md, "Time"):
- as of T (`--train-until`), only events before T and labels with label_time < T exist;
  an event whose label is not known by T is never used as a negative;
- the last M days before T, M the 90th percentile of the label delay, are left out
  of fitting: there only frauds are known yet, and using them alone would bias the model;
- train | gap G | validation, G the configured quantile of the fraud label delay;
- the test period starts at T (or is the last `test_days` of the data without
  `--train-until`), and is scored with every label the data holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from risk_service import features as fs
from risk_service.scores import decide_many, fraud_scores
from training import fraud as fr
from training.costs import Costs, ThresholdChoice, choose_thresholds
from training.datasets import DataError, Tables, TimeSplit, labels_known_by
from training.fraud_eval import (
    card_ids,
    cost_curve,
    decision_metrics,
    recall_by_scenario,
    score_metrics,
)

DAY = pd.Timedelta(days=1)


@dataclass
class FraudRun:
    """Everything the fraud training produced: the model, its split, and its evaluation."""

    model: fr.FittedFraudModel
    split: TimeSplit
    threshold_choice: ThresholdChoice
    metrics: dict[str, dict[str, Any]]
    decisions: dict[str, Any]
    scenarios: dict[str, dict[str, float]]
    importance: pd.DataFrame
    test: pd.DataFrame  # per test event: y, p, amount, day, card, raw model scores of baselines
    cost_curve: pd.DataFrame
    daily_cp: pd.Series
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)
    version: str = ""

    def metrics_for_manifest(self) -> dict[str, Any]:
        return {
            "test": self.metrics,
            "policy_on_test": self.decisions,
            "policy_on_validation": {
                "rates": self.threshold_choice.rates,
                "cost": self.threshold_choice.cost,
                "cost_approve_all": self.threshold_choice.cost_approve_all,
                "reviews_per_day": self.threshold_choice.reviews_per_day,
            },
            "counts": self.counts,
        }

    def headline(self) -> str:
        m = self.metrics["model"]
        return (
            f"test ROC-AUC {m['roc_auc']:.3f}, AP {m['average_precision']:.3f}, "
            f"recall@1%FPR {m['recall_at_fpr_0.01']:.3f} "
            f"(rules AP {self.metrics['rules']['average_precision']:.3f}, "
            f"logistic AP {self.metrics['logistic']['average_precision']:.3f})"
        )


def plan_split(
    events: pd.DataFrame, known: pd.Series, config: dict[str, Any], as_of: pd.Timestamp | None
) -> tuple[TimeSplit, pd.Timedelta, pd.Timedelta]:
    """Periods for train, validation and test; returns (split, maturity M, gap G)."""
    cfg = config["split"]
    ts = events["timestamp"]
    start, data_end = ts.min(), ts.max() + pd.Timedelta(milliseconds=1)
    delay = events["label_time"] - ts
    labelled = known.notna()
    if as_of is None:
        fit_end = data_end - cfg["test_days"] * DAY
        test_start, test_end = fit_end, data_end
        maturity = pd.Timedelta(0)
    else:
        fit_end = min(as_of, data_end)
        test_start, test_end = fit_end, min(as_of + cfg["test_days"] * DAY, data_end)
        in_fit = labelled & (ts < fit_end)
        maturity = pd.Timedelta(delay[in_fit].quantile(0.9)) if in_fit.any() else pd.Timedelta(0)
    frauds = labelled & (known == 1)
    gap = pd.Timedelta(delay[frauds].quantile(cfg["gap_quantile"])) if frauds.any() else DAY
    gap = gap.ceil("h")
    valid_end = fit_end - maturity
    valid_start = valid_end - cfg["valid_days"] * DAY
    train_start = start + cfg["warmup_days"] * DAY
    train_end = valid_start - gap
    if train_end - train_start < 7 * DAY:
        # A short history: drop the warm-up and shorten validation before giving up.
        train_start = start
        valid_start = valid_end - max(3 * DAY, (valid_end - start - gap) * 0.3)
        train_end = valid_start - gap
    if train_end - train_start < 3 * DAY:
        raise DataError(
            f"history too short to train the fraud model as of {fit_end}: the label-delay gap "
            f"({gap}) and maturity ({maturity}) leave {train_end - train_start} of training "
            "data; bring a longer history (120 days works) or an earlier --train-until"
        )
    return (
        TimeSplit(train_start, train_end, valid_start, valid_end, test_start, test_end),
        (maturity),
        gap,
    )


def train_fraud(
    tables: Tables,
    *,
    config: dict[str, Any],
    seed: int,
    as_of: pd.Timestamp | None,
    progress: bool = False,
) -> FraudRun:
    from tqdm import tqdm

    events = tables.events
    assert events is not None
    notes: list[str] = []
    bar = tqdm(total=4, desc="fraud model", unit="step", disable=not progress, leave=False)
    bar.set_postfix_str("features")
    if as_of is not None:
        known = labels_known_by(events, as_of, "is_fraud")
    else:
        known = events["is_fraud"].astype("float64")
    split, maturity, gap = plan_split(events, known, config, as_of)
    scope = events[events["timestamp"] < split.test_end].reset_index(drop=True)
    known = known.iloc[: len(scope)].reset_index(drop=True)
    # Point-in-time by construction: an event at t < T only sees labels with label_time < t.
    X = fs.compute_offline_features(scope, tables.accounts)
    bar.update()
    bar.set_postfix_str("LightGBM")
    ts = scope["timestamp"]
    train_mask = ((ts >= split.train_start) & (ts < split.train_end) & known.notna()).to_numpy()
    valid_mask = ((ts >= split.valid_start) & (ts < split.valid_end) & known.notna()).to_numpy()
    test_mask = ((ts >= split.test_start) & (ts < split.test_end)).to_numpy()
    dropped = int(((ts < split.valid_end) & known.isna()).sum())
    if dropped:
        notes.append(f"{dropped} events with labels unknown at the as-of time were not used")
    if maturity > pd.Timedelta(0):
        notes.append(
            f"the last {maturity} before the as-of time were left out of fitting: "
            "their good labels were not yet mature"
        )
    y_train = known[train_mask].to_numpy(np.int64)
    y_valid = known[valid_mask].to_numpy(np.int64)
    y_test = events["is_fraud"].iloc[: len(scope)].to_numpy(np.int64)[test_mask]
    if test_mask.sum() == 0 or y_test.sum() == 0:
        raise DataError(f"the test period {split.test_start} - {split.test_end} has no fraud")

    model = fr.fit_fraud_model(
        X[train_mask],
        y_train,
        X[valid_mask],
        y_valid,
        feature_names=fs.FEATURE_NAMES,
        categorical=fs.CATEGORICAL_FEATURES,
        seed=seed,
    )
    bar.update()
    bar.set_postfix_str("thresholds")
    choice = thresholds_on_validation(model, X, scope, valid_mask, y_valid, split, config)

    bar.update()
    bar.set_postfix_str("evaluation and baselines")
    run = evaluate_fraud(
        model,
        X,
        scope,
        split=split,
        masks=(train_mask, valid_mask, test_mask),
        y_train=y_train,
        y_valid=y_valid,
        y_test=y_test,
        choice=choice,
        config=config,
        seed=seed,
        notes=notes,
        gap=gap,
    )
    bar.update()
    bar.close()
    return run


def thresholds_on_validation(
    model: fr.FittedFraudModel,
    X: pd.DataFrame,
    scope: pd.DataFrame,
    valid_mask: np.ndarray,
    y_valid: np.ndarray,
    split: TimeSplit,
    config: dict[str, Any],
) -> ThresholdChoice:
    """Challenge/review/decline thresholds that cost least on the validation period, within
    the configured budgets (reviews per day scale with the period's traffic)."""
    budgets = config["budgets"]
    amount = scope["amount"].to_numpy(np.float64)
    valid_days = max((split.valid_end - split.valid_start) / DAY, 1e-9)
    per_day = valid_mask.sum() / valid_days
    return choose_thresholds(
        model.predict_proba(X[valid_mask]),
        y_valid,
        amount[valid_mask],
        Costs.from_config(config),
        days=valid_days,
        reviews_per_day=budgets["reviews_per_day_per_10k_events"] * per_day / 10_000,
        max_challenge_rate=budgets["max_challenge_rate"],
        max_decline_rate=budgets["max_decline_rate"],
    )


def evaluate_fraud(
    model: fr.FittedFraudModel,
    X: pd.DataFrame,
    scope: pd.DataFrame,
    *,
    split: TimeSplit,
    masks: tuple[np.ndarray, np.ndarray, np.ndarray],
    y_train: np.ndarray,
    y_valid: np.ndarray,
    y_test: np.ndarray,
    choice: ThresholdChoice,
    config: dict[str, Any],
    seed: int,
    notes: list[str],
    gap: pd.Timedelta,
) -> FraudRun:
    """Score the test period with the model and both baselines, and price the policy."""
    train_mask, valid_mask, test_mask = masks
    costs = Costs.from_config(config)
    amount = scope["amount"].to_numpy(np.float64)
    X_test = X[test_mask]
    p_test = model.predict_proba(X_test)
    numeric = [f for f in fs.FEATURE_NAMES if f not in fs.CATEGORICAL_FEATURES]
    logistic = fr.fit_logistic_baseline(
        X[train_mask], y_train, numeric=numeric, categorical=list(fs.CATEGORICAL_FEATURES)
    )
    test_events = scope[test_mask].reset_index(drop=True)
    days = test_events["timestamp"].dt.floor("D").to_numpy()
    cards = card_ids(test_events)
    amount_test = amount[test_mask]
    scores = {
        "model": p_test,
        "rules": fr.rule_scores(X_test),
        "logistic": fr.logistic_scores(logistic, X_test),
    }
    metrics = {
        name: score_metrics(y_test, s, amount_test, days, cards) for name, s in scores.items()
    }
    test_days = max((split.test_end - split.test_start) / DAY, 1e-9)
    decisions = decide_many(p_test, choice.thresholds)
    policy = decision_metrics(decisions, y_test, amount_test, costs, test_days)
    scenario = test_events.get("fraud_scenario")
    from training import evaluate as ev

    _, daily_cp = ev.card_precision_at_k(days, cards, y_test, p_test, k=100)
    test_frame = pd.DataFrame(
        {
            "y": y_test,
            "p": p_test,
            "score": fraud_scores(p_test),
            "raw": model.raw(X_test),
            "rules": scores["rules"],
            "logistic": scores["logistic"],
            "amount": amount_test,
            "decision": decisions,
        }
    )
    return FraudRun(
        model=model,
        split=split,
        threshold_choice=choice,
        metrics=metrics,
        decisions=policy,
        scenarios=recall_by_scenario(scenario, y_test, decisions > 0),
        importance=fr.shap_importance(model, X[valid_mask], seed=seed),
        test=test_frame,
        cost_curve=cost_curve(p_test, y_test, amount_test, costs),
        daily_cp=daily_cp,
        counts={
            "train_events": int(train_mask.sum()),
            "train_frauds": int(y_train.sum()),
            "valid_events": int(valid_mask.sum()),
            "valid_frauds": int(y_valid.sum()),
            "test_events": int(test_mask.sum()),
            "test_frauds": int(y_test.sum()),
            "gap_hours": int(gap / pd.Timedelta(hours=1)),
        },
        notes=notes,
    )
