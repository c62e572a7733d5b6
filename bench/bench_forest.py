"""Benchmark: single-row fraud-model inference, LightGBM (num_threads=1) vs the compiled forest.

Loads the committed fraud champion (models/registry.json), draws rows across each
feature's training range (categorical codes from the seen values, 10% NaN), checks the
two agree on every row, then times one `predict` call per row.

Usage: python bench/bench_forest.py [--rows 2000] [--repeats 5] [--kind fraud]
Prints p50/p99 µs per call and a Markdown table row.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import lightgbm as lgb
import numpy as np

from risk_service.forest import CompiledForest

MODELS = Path(__file__).resolve().parents[1] / "models"


def champion(kind: str) -> tuple[str, str]:
    registry = json.loads((MODELS / "registry.json").read_text())
    version = registry[kind]["champion"]
    return version, (MODELS / kind / version / f"{kind}_lgbm.txt").read_text()


def sample_rows(booster: lgb.Booster, n: int, seed: int = 0) -> np.ndarray:
    """Rows spanning each feature's range from the model's feature_infos, 10% NaN."""
    rng = np.random.default_rng(seed)
    infos = booster.dump_model()["feature_infos"]
    columns = []
    for name in booster.feature_name():
        info = infos[name]
        if info["values"]:
            columns.append(rng.choice(np.asarray(info["values"], dtype=np.float64), n))
        else:
            columns.append(rng.uniform(info["min_value"], info["max_value"], n))
    X = np.column_stack(columns)
    X[rng.random(X.shape) < 0.1] = np.nan
    return X


def time_single_rows(predict: Callable[[np.ndarray], np.ndarray], X: np.ndarray) -> np.ndarray:
    """Nanoseconds per one-row call, row by row (each row a fresh (1, n) array)."""
    rows = [X[i : i + 1].copy() for i in range(len(X))]
    for row in rows[:200]:
        predict(row)  # warm caches and branch predictors
    out = np.empty(len(rows), dtype=np.int64)
    clock = time.perf_counter_ns
    for i, row in enumerate(rows):
        start = clock()
        predict(row)
        out[i] = clock() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kind", choices=["fraud", "credit"], default="fraud")
    args = parser.parse_args()

    version, model_str = champion(args.kind)
    booster = lgb.Booster(model_str=model_str)
    start = time.perf_counter()
    forest = CompiledForest.from_model_string(model_str)
    build_ms = (time.perf_counter() - start) * 1e3
    X = sample_rows(booster, args.rows)
    diff = np.abs(forest.predict_proba(X) - booster.predict(X, num_threads=1)).max()
    print(f"{version}: {forest!r}; built in {build_ms:.0f} ms; max |diff| = {diff:.1e}")

    def lightgbm(row: np.ndarray) -> np.ndarray:
        return np.asarray(booster.predict(row, num_threads=1))

    timings: dict[str, list[np.ndarray]] = {"lightgbm": [], "compiled": []}
    for _ in range(args.repeats):
        timings["lightgbm"].append(time_single_rows(lightgbm, X))
        timings["compiled"].append(time_single_rows(forest.predict_proba, X))
    stats = {
        name: np.percentile(np.concatenate(runs), [50, 99]) / 1e3 for name, runs in timings.items()
    }
    for name, (p50, p99) in stats.items():
        print(f"{name:>9}: p50 {p50:6.1f} µs, p99 {p99:6.1f} µs per single-row predict")
    lgb_p50, lgb_p99 = stats["lightgbm"]
    fast_p50, fast_p99 = stats["compiled"]
    print()
    print("| model | trees | LightGBM p50 / p99 (µs) | compiled p50 / p99 (µs) | speed-up (p50) |")
    print("|---|---|---|---|---|")
    print(
        f"| {args.kind} {version} | {forest.num_trees} | {lgb_p50:.1f} / {lgb_p99:.1f} "
        f"| {fast_p50:.1f} / {fast_p99:.1f} | {lgb_p50 / fast_p50:.1f}× |"
    )


if __name__ == "__main__":
    main()
