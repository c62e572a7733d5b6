"""Benchmark: fraud reasons per row: TreeSHAP (compiled, and LightGBM's pred_contrib) and path
attribution.

Loads the committed fraud champion as the service does (`FraudModel`, verified bundle),
takes the events it flags in the out-of-time test period of the default world (offline
features of `data/default-world`; without it, a generated 2,000-account world), and:

- checks that path attribution adds up (bias + contributions = raw margin) on every row;
- measures how often the two methods give the same reasons (`explain.compare_reasons`,
  TreeSHAP as the reference) on three sets of flagged rows;
- checks that the compiled TreeSHAP (`risk_service.treeshap`) equals LightGBM's
  ``pred_contrib`` on every flagged row compared;
- times one `FraudModel.contributions(row, method=...)` call per row, as the service
  makes it, after a warm-up, and LightGBM's ``pred_contrib`` on one thread (what the service
  used before, and its fallback), interleaved row by row so that a slower moment of the
  machine hits all three alike: p50 / p99 per method and the ratios.

Usage: python bench/bench_reasons.py [--data data/default-world] [--rows 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from risk_service import explain
from risk_service import features as fs
from risk_service.bundles import Registry, verify_bundle
from risk_service.fraud_model import FraudModel

MODELS = Path(__file__).resolve().parents[1] / "models"


def load_model() -> FraudModel:
    registry = Registry(MODELS)
    version = registry.champion("fraud")
    assert version is not None, "no fraud champion"
    return FraudModel(verify_bundle(registry.bundle_dir("fraud", version), expected_kind="fraud"))


def feature_rows(data: Path, model: FraudModel) -> tuple[str, np.ndarray]:
    """Features of the events after the model's test start (or of a generated world)."""
    if (data / "events.parquet").exists():
        events = pd.read_parquet(data / "events.parquet")
        accounts = pd.read_parquet(data / "accounts.parquet")
        source = f"{data}, test period"
    else:
        from training.simulate import generate_world

        world = generate_world(accounts=2000, days=60, seed=11)
        events, accounts = world.events, world.accounts
        source = "generated world (2,000 accounts x 60 days, seed 11), after day 14"
    X = fs.compute_offline_features(events, accounts)[list(fs.FEATURE_NAMES)].to_numpy()
    times = pd.to_datetime(events["timestamp"], utc=True)
    if source.endswith("test period"):
        start = pd.Timestamp(model.bundle.manifest["time_ranges"]["test_start"])
    else:
        start = times.min() + pd.Timedelta(days=14)  # past the cold start of every state
    return source, np.ascontiguousarray(X[(times >= start).to_numpy()], dtype=np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    parser.add_argument("--rows", type=int, default=1000, help="flagged rows timed (and compared)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = load_model()
    source, X = feature_rows(args.data, model)
    p = model.predict_proba(X)
    th = model.thresholds
    rng = np.random.default_rng(0)
    groups = {
        "p >= review threshold": np.flatnonzero(p >= th["review"]),
        "non-approve (p >= challenge)": np.flatnonzero(p >= th["challenge"]),
        "top 5% by probability": np.flatnonzero(p >= np.quantile(p, 0.95)),
    }
    print(f"{model.version}, {model.forest!r}")
    print(f"rows: {source}: {len(X):,} events")

    names = list(fs.FEATURE_NAMES)
    print()
    print("| flagged rows | rows | top-1 | top-3 as set | top-3 share | top-1 in SHAP top-3 |")
    print("|---|---|---|---|---|---|")
    worst = shap_diff = 0.0
    for label, index in groups.items():
        index = np.sort(rng.choice(index, min(len(index), args.rows * 2), replace=False))
        rows = X[index]
        path = model.forest.path_contributions(rows)
        worst = max(worst, float(np.abs(path.sum(axis=1) - model.forest.predict_raw(rows)).max()))
        shap = model.contributions(rows, method="treeshap")
        reference = model.booster.predict(rows, pred_contrib=True, num_threads=1)[:, :-1]
        shap_diff = max(shap_diff, float(np.abs(shap - reference).max()))
        agree = explain.compare_reasons(names, rows, path[:, :-1], shap)
        print(
            f"| {label} | {len(rows):,} | {agree['top1']:.1%} | {agree['top3_set']:.1%} "
            f"| {agree['top3_share']:.1%} | {agree['top1_in_top3']:.1%} |"
        )
    print(f"\nadditivity: max |bias + sum(contributions) - margin| = {worst:.1e}")
    print(f"compiled TreeSHAP vs LightGBM pred_contrib: max |difference| = {shap_diff:.1e}")

    flagged = groups["non-approve (p >= challenge)"]
    timed = X[rng.choice(flagged, min(len(flagged), args.rows), replace=False)]
    calls: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "treeshap (compiled)": lambda row: model.contributions(row, method="treeshap"),
        "treeshap (LightGBM pred_contrib, 1 thread)": lambda row: model.booster.predict(
            row, pred_contrib=True, num_threads=1
        ),
        "path": lambda row: model.contributions(row, method="path"),
    }
    runs = time_interleaved(calls, timed, args.repeats)
    stats = {name: np.percentile(ns, [50, 99]) / 1e3 for name, ns in runs.items()}
    print(f"\none-row calls on {len(timed):,} non-approve rows x {args.repeats}, interleaved")
    print("| method | p50 (µs) | p99 (µs) |")
    print("|---|---|---|")
    for method, (p50, p99) in stats.items():
        print(f"| {method} | {p50:,.1f} | {p99:,.1f} |")
    compiled, lightgbm, path = stats.values()
    print(
        f"\nLightGBM / compiled TreeSHAP: {lightgbm[0] / compiled[0]:.1f}x at p50, "
        f"{lightgbm[1] / compiled[1]:.1f}x at p99; compiled TreeSHAP / path: "
        f"{compiled[0] / path[0]:.0f}x at p50"
    )


def time_interleaved(
    calls: dict[str, Callable[[np.ndarray], np.ndarray]], X: np.ndarray, repeats: int
) -> dict[str, np.ndarray]:
    """Nanoseconds per one-row call of each method, the methods taking turns on each row."""
    rows = [X[i : i + 1].copy() for i in range(len(X))]
    for call in calls.values():
        for row in rows[:100]:
            call(row)
    out = {name: np.empty(len(rows) * repeats, dtype=np.int64) for name in calls}
    clock = time.perf_counter_ns
    for r in range(repeats):
        for i, row in enumerate(rows):
            for name, call in calls.items():
                start = clock()
                call(row)
                out[name][r * len(rows) + i] = clock() - start
    return out


if __name__ == "__main__":
    main()
