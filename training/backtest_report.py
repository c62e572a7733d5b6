"""Backtest measurement: candidates side by side in money, as summary.json and one report.html.

Labels measure, they never decide. They are taken as known at `labels_as_of` (the
last event of the data: what the team knows when it runs the backtest): an event
whose label_time is not before it (a fraud not yet reported, or a good event still
inside its chargeback window) is *pending*. Pending events count in decision rates
and alert volumes, and are left out of every labelled figure (fraud caught, false
declines, precision, cost, recall, Card Precision@k), never counted as good.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from risk_service.bundles import atomic_write_bytes, atomic_write_json, jsonable
from risk_service.credit_model import score_from_pd
from risk_service.scores import DECISIONS
from training import evaluate as ev
from training.backtest_credit import score_applications
from training.costs import Costs
from training.fraud_eval import card_ids, decision_metrics, recall_by_scenario
from training.report import STYLE, _png, dict_html, table_html

if TYPE_CHECKING:
    from training.backtest import BacktestRun


def _known(run: BacktestRun) -> tuple[np.ndarray, np.ndarray]:
    ev_ = run.events
    if "is_fraud" not in ev_.columns:
        return np.zeros(len(ev_), dtype=bool), np.zeros(len(ev_), dtype=np.int64)
    known = (ev_["label_time"] < run.labels_as_of).to_numpy(bool)
    return known, ev_["is_fraud"].fillna(0).to_numpy(np.int64)


def review_capacity(run: BacktestRun, days: float) -> float:
    configured = float(run.config["backtest"]["review_capacity_per_day"])
    if configured > 0:
        return configured
    per_10k = float(run.config["budgets"]["reviews_per_day_per_10k_events"])
    return per_10k * len(run.events) / max(days, 1e-9) / 10_000


def fraud_metrics(run: BacktestRun) -> tuple[dict[str, Any], dict[str, pd.Series], pd.DataFrame]:
    """Per candidate: decision rates, labelled metrics; daily CP@k and alerts per day."""
    ev_ = run.events
    known, y = _known(run)
    amount = ev_["amount"].to_numpy(float)
    day = ev_["timestamp"].dt.floor("D").dt.strftime("%Y-%m-%d").to_numpy()
    days = max((run.end - run.start) / pd.Timedelta(days=1), 1e-9)
    costs = Costs.from_config(run.config)
    k = int(run.config["backtest"]["card_precision_k"])
    cards = card_ids(ev_)
    scenario = ev_["fraud_scenario"] if "fraud_scenario" in ev_.columns else None
    out: dict[str, Any] = {}
    cp_daily: dict[str, pd.Series] = {}
    alerts = {}
    for c in run.candidates:
        dec = run.decisions[c.name].astype(np.int64)
        m: dict[str, Any] = {f"{d}_rate": float(np.mean(dec == i)) for i, d in enumerate(DECISIONS)}
        m["events"] = len(dec)
        m["labelled_events"] = int(known.sum())
        m["pending_labels"] = int((~known).sum())
        if known.any():
            labelled = decision_metrics(dec[known], y[known], amount[known], costs, days)
            m.update({f"labelled_{k_}" if k_.endswith("_rate") else k_: v
                      for k_, v in labelled.items()})  # fmt: skip
            sc = scenario[known] if scenario is not None else None
            m["recall_by_scenario"] = recall_by_scenario(sc, y[known], dec[known] > 0)
            if y[known].any():
                p = run.probabilities[c.name][known]
                mean, per_day = ev.card_precision_at_k(day[known], cards[known], y[known], p, k=k)
                m[f"card_precision_at_{k}"] = mean
                cp_daily[c.name] = per_day
        per_day_alerts = pd.Series(dec == 2).groupby(day).sum()
        alerts[c.name] = per_day_alerts
        m["reviews_per_day"] = float((dec == 2).sum() / days)
        out[c.name] = m
    return out, cp_daily, pd.DataFrame(alerts)


def credit_metrics(
    run: BacktestRun,
    credit: pd.DataFrame | None,
    accounts: pd.DataFrame | None,
    history: pd.DataFrame,
) -> dict[str, Any]:
    """Per candidate with a credit model: pay-later payments and credit applications by band."""
    out: dict[str, Any] = {}
    pay = (run.events["funding_source"] == "credit_line").to_numpy(bool) if (
        "funding_source" in run.events.columns) else np.zeros(len(run.events), bool)  # fmt: skip
    amount = run.events["amount"].to_numpy(float)
    for c in run.candidates:
        if c.credit is None:
            continue
        model = c.credit
        pd_ = run.credit_pd[c.name][pay]
        bands = np.array([model.band(score_from_pd(v)) for v in pd_], dtype=object)
        approved = run.credit_decision[c.name][pay] == "approve"
        frame = pd.DataFrame(
            {"band": bands, "approved": approved, "pd": pd_, "amount": amount[pay]}
        )
        payments = (
            frame.groupby("band", sort=True)
            .agg(
                payments=("pd", "size"), approval_rate=("approved", "mean"), mean_pd=("pd", "mean")
            )
            .reset_index()
            .to_dict(orient="records")
        )
        section: dict[str, Any] = {
            "credit_line_payments": int(pay.sum()),
            "payment_approval_rate": float(approved.mean()) if len(approved) else None,
            "payment_expected_loss": float((frame["pd"] * frame["amount"])[approved].sum()),
            "payments_by_band": payments,
        }
        if credit is not None and len(credit):
            apps = score_applications(model, credit, accounts, history, run.start, run.end)
            if apps is not None:
                known = (apps["label_time"] < run.labels_as_of).to_numpy(bool)
                apps["default_known"] = np.where(known, apps["defaulted"], np.nan)
                apps["approved"] = apps["decision"] == "approve"
                apps["expected_loss"] = np.where(
                    apps["approved"], apps["probability_of_default"] * apps["recommended_limit"], 0
                )
                by_band = (
                    apps.groupby("band", sort=True)
                    .agg(
                        applications=("approved", "size"),
                        approval_rate=("approved", "mean"),
                        mean_pd=("probability_of_default", "mean"),
                        default_rate=("default_known", "mean"),
                        defaults_known=("default_known", "count"),
                        expected_loss=("expected_loss", "sum"),
                    )
                    .reset_index()
                )
                section["applications"] = len(apps)
                section["application_approval_rate"] = float(apps["approved"].mean())
                section["application_expected_loss"] = float(apps["expected_loss"].sum())
                section["applications_by_band"] = by_band.to_dict(orient="records")
        out[c.name] = section
    return out


def _bars(frame: pd.DataFrame, title: str, ylabel: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    frame.plot.bar(ax=ax, rot=0)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return _png(fig)


def _lines(frame: pd.DataFrame, title: str, ylabel: str, capacity: float | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.2))
    frame.plot(ax=ax)
    if capacity is not None:
        ax.axhline(capacity, color="red", linestyle="--", label="review capacity")
        ax.legend()
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return _png(fig)


def write_outputs(
    run: BacktestRun,
    out_dir: Path,
    *,
    credit: pd.DataFrame | None,
    accounts: pd.DataFrame | None,
    history: pd.DataFrame,
) -> dict[str, Any]:
    """summary.json and report.html beside decisions.parquet; returns the summary."""
    fraud, cp_daily, alerts = fraud_metrics(run)
    credit_section = credit_metrics(run, credit, accounts, history)
    days = max((run.end - run.start) / pd.Timedelta(days=1), 1e-9)
    capacity = review_capacity(run, days)
    summary = {
        "period": {"from": run.start.isoformat(), "to": run.end.isoformat(), "days": days},
        "labels_as_of": run.labels_as_of.isoformat(),
        "review_capacity_per_day": capacity,
        "candidates": {c.name: c.describe() for c in run.candidates},
        "fraud": fraud,
        "credit": credit_section,
        "timings_seconds": run.timings,
        "notes": run.notes,
    }
    atomic_write_json(out_dir / "summary.json", jsonable(summary))
    scalar = pd.DataFrame(
        {name: {k: v for k, v in m.items() if not isinstance(v, dict | list)}
         for name, m in fraud.items()}
    )  # fmt: skip
    parts = [
        f"<h1>Backtest {html.escape(run.start.isoformat())} to {html.escape(run.end.isoformat())}"
        "</h1>",
        "<h2>Candidates</h2>",
        table_html(pd.DataFrame({c.name: c.describe() for c in run.candidates}).T),
        '<p class="note">Labels are used only to measure, as known at '
        f"{html.escape(run.labels_as_of.isoformat())} (the last event of the data). Events "
        "whose label was not known by then (a fraud not yet reported, a good event still in its "
        "chargeback window) are <b>pending</b>: they count in decision rates and alerts, and are "
        "left out of every labelled figure, never counted as good. End --to well before the "
        "data's end (the chargeback window) for final figures.</p>",
        "<h2>Fraud: candidates side by side</h2>",
        table_html(scalar),
    ]
    names = [c.name for c in run.candidates]
    rates = pd.DataFrame({n: [fraud[n][f"{d}_rate"] for d in DECISIONS] for n in names},
                         index=list(DECISIONS))  # fmt: skip
    parts.append(_bars(rates, "decision rates", "share of events"))
    if all("fraud_caught" in fraud[n] for n in names):
        caught = pd.DataFrame(
            {n: [fraud[n]["fraud_caught"], fraud[n]["fraud_total"]] for n in names},
            index=["caught", "all frauds"],
        )
        value = pd.DataFrame(
            {n: [fraud[n]["fraud_caught_value"], fraud[n]["fraud_total_value"]] for n in names},
            index=["caught", "all frauds"],
        )
        declines = pd.DataFrame(
            {n: [fraud[n]["false_declines"], fraud[n]["decline_precision"]] for n in names},
            index=["false declines", "decline precision"],
        )
        cost = pd.DataFrame(
            {n: [fraud[n]["expected_cost"], fraud[n]["expected_cost_approve_all"]] for n in names},
            index=["expected cost", "approve everything"],
        )
        parts += [
            _bars(caught, "fraud caught (not approved), count", "events"),
            _bars(value, "fraud caught, value", "amount"),
            _bars(declines.loc[["false declines"]], "false declines (good customers refused)",
                  "events"),
            _bars(declines.loc[["decline precision"]], "precision of declines", "share"),
            _bars(cost, "expected cost under the config's costs", "money"),
        ]  # fmt: skip
        recall = pd.DataFrame(
            {n: {s: v["recall"] for s, v in fraud[n].get("recall_by_scenario", {}).items()}
             for n in names}
        )  # fmt: skip
        if len(recall):
            parts += ["<h3>Recall per scenario</h3>", table_html(recall),
                      _bars(recall, "recall per fraud scenario", "share stopped")]  # fmt: skip
    if cp_daily:
        k = int(run.config["backtest"]["card_precision_k"])
        parts.append(_lines(pd.DataFrame(cp_daily), f"daily Card Precision@{k}", "precision"))
    parts += [
        "<h3>Alerts (reviews) per day</h3>",
        _lines(alerts, "reviews per day against the review capacity", "reviews", capacity),
    ]
    if credit_section:
        parts.append("<h2>Credit</h2>")
        for name, section in credit_section.items():
            parts += [f"<h3>{html.escape(name)}</h3>", dict_html(section)]
            if section.get("applications_by_band"):
                frame = pd.DataFrame(section["applications_by_band"]).set_index("band")
                title = f"{name}: approvals and default rate per band"
                parts.append(_bars(frame[["approval_rate", "default_rate"]], title, "share"))
    if run.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(
            f"<li>{html.escape(n)}</li>" for n in run.notes) + "</ul>")  # fmt: skip
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>backtest</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}"
        f"<h2>Summary</h2><pre>{html.escape(json.dumps(jsonable(summary), indent=1)[:20000])}"
        "</pre></body></html>"
    )
    atomic_write_bytes(out_dir / "report.html", page.encode("utf-8"))
    return summary
