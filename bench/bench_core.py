"""Benchmark: the scoring core in process, per event, on the committed models.

Replays default-world events (timestamps shifted to now) through the same
objects the service uses and times, per event:
- core without SHAP: online features + state update, fraud model, credit model
  (credit-line payments), policy;
- the whole core as `Scorer` runs it (adds reasons for non-approve decisions and
  building the decision record), without HTTP and without the log append.

Usage: python bench/bench_core.py [--data data/default-world] [--events 30000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from risk_service import create_app
from risk_service.requests import validate_score_request
from risk_service.scores import decide
from risk_service.scoring import _CREDIT_INDEX, _FRAUD_INDEX, FeatureView, _as_application


def requests_from(data: Path, n: int) -> list:
    events = pd.read_parquet(data / "events.parquet").head(n)
    start = events["timestamp"].iloc[0]
    base = pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=2)
    labels = ["is_fraud", "label_time", "fraud_scenario"]
    out = []
    now_ms = int(time.time() * 1000) + 10**9
    for row in events.drop(columns=labels).to_dict(orient="records"):
        body = {k: v for k, v in row.items() if v is not None and v == v}
        # compress ~n events into one day before now, keeping their order
        body["timestamp"] = (base + (row["timestamp"] - start) / 50).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ"
        )
        out.append(validate_score_request(body, now_ms=now_ms))
    return out


def pct(values: list[float]) -> str:
    us = np.asarray(values) * 1e6
    return f"p50 {np.percentile(us, 50):.0f} µs, p99 {np.percentile(us, 99):.0f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("data/default-world"))
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    args = parser.parse_args()
    requests = requests_from(args.data, args.events)
    app = create_app(
        {
            "DECISION_LOG_PATH": "/tmp/bench-core/decisions.sqlite",
            "HASH_KEY": "bench-" + "k" * 32,
            "ACCOUNTS_FILE": str(args.data / "accounts.parquet"),
            "MAX_LATENESS_SECONDS": 10**9,
        }
    )
    scorer = app.extensions["risk"]
    engine, models, policy = scorer.engine, scorer.models, scorer.policy
    half = len(requests) // 2
    core: list[float] = []
    for i, request in enumerate(requests[:half]):
        event = request.event
        started = time.perf_counter()
        xc = None
        if event.get("funding_source") == "credit_line":
            xc = engine.credit_features(_as_application(event))
        x = engine.process(event)
        p = float(models.fraud.predict_proba(x.reshape(1, -1))[0])
        if xc is not None and models.credit is not None:
            models.credit.predict_pd(xc.reshape(1, -1))
        policy.evaluate(event, FeatureView(x, _FRAUD_INDEX), decide(p, models.fraud.thresholds))
        if i >= args.warmup:
            core.append(time.perf_counter() - started)
    full: list[float] = []
    now_ms = int(time.time() * 1000)
    for request in requests[half:]:
        started = time.perf_counter()
        entry = scorer._score_new(request, now_ms, scorer.engine, scorer.watermark_ms)
        scorer.watermark_ms = max(scorer.watermark_ms, request.timestamp_ms)
        scorer._finish(entry, request, started)
        full.append(time.perf_counter() - started)
    assert _CREDIT_INDEX  # the same indexes the service uses
    print(f"core without SHAP ({len(core):,} events): {pct(core)}")
    print(f"whole core with reasons for non-approvals ({len(full):,} events): {pct(full)}")
    print(f"| scoring core, features + both models + policy | {pct(core)} |")
    print(f"| scoring core incl. reasons and decision record | {pct(full)} |")


if __name__ == "__main__":
    main()
