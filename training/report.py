"""The evaluation report: one self-contained HTML file with embedded PNG plots, plus metrics.json.

Readable offline: no scripts, no external styles or images.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from risk_service.bundles import atomic_write_bytes, atomic_write_json, jsonable

if TYPE_CHECKING:
    from training.credit_pipeline import CreditRun
    from training.fraud_pipeline import FraudRun

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.note{background:#fff7e0;border-left:4px solid #e0a000;padding:0.5em 1em}
img{max-width:100%}h2{border-bottom:2px solid #333}
"""


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float | np.floating):
        value = float(value)
        if np.isnan(value):
            return "–"
        if value.is_integer() and abs(value) >= 1:  # counts in float columns
            return f"{int(value):,}"
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return html.escape(str(value))


def table_html(frame: pd.DataFrame, index: bool = True) -> str:
    head = ([str(frame.index.name or "")] if index else []) + [str(c) for c in frame.columns]
    rows = []
    for idx, row in frame.iterrows():
        cells = ([f"<td>{_fmt(idx)}</td>"] if index else []) + [f"<td>{_fmt(v)}</td>" for v in row]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f"<table><tr>{header}</tr>{''.join(rows)}</table>"


def dict_html(data: dict[str, Any]) -> str:
    """Scalars as a two-column table; nested tables (lists of records, dicts) rendered below."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict | list)}
    out = []
    if scalars:
        frame = pd.DataFrame({"value": list(scalars.values())}, index=list(scalars.keys()))
        out.append(table_html(frame))
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            out.append(f"<h4>{html.escape(key)}</h4>" + table_html(pd.DataFrame(value), False))
        elif isinstance(value, dict) and value:
            if all(isinstance(v, dict) for v in value.values()):
                out.append(f"<h4>{html.escape(key)}</h4>" + table_html(pd.DataFrame(value).T))
            else:
                out.append(f"<h4>{html.escape(key)}</h4>" + dict_html(value))
    return "".join(out)


def _fraud_plots(run: FraudRun) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test = run.test
    plots = []
    # Calibration: predicted vs observed in quantile bins of the calibrated probability.
    fig, ax = plt.subplots(figsize=(5, 4))
    # Finer bins in the upper tail, where the frauds and the decisions are.
    levels = [0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 1.0]
    cuts = np.unique(np.quantile(test["p"], levels))
    codes = np.searchsorted(cuts, test["p"].to_numpy(), side="right") - 1
    bins = np.clip(codes, 0, max(len(cuts) - 2, 0))
    cal = test.groupby(bins).agg(pred=("p", "mean"), obs=("y", "mean"))
    ax.loglog(cal["pred"].clip(1e-5), cal["obs"].clip(1e-5), "o-", label="model")
    ax.plot([1e-5, 1], [1e-5, 1], "k--", lw=1, label="perfect")
    ax.set_xlabel("predicted fraud probability (bin mean)")
    ax.set_ylabel("observed fraud rate (floored at 1e-5)")
    ax.set_title("Calibration (test period; quantile bins, finer in the tail)")
    ax.legend()
    plots.append(_png(fig))
    # Score distributions
    fig, ax = plt.subplots(figsize=(5, 4))
    edges = list(range(0, 101, 4))
    ax.hist(test.loc[test["y"] == 0, "score"], bins=edges, alpha=0.6, density=True, label="good")
    ax.hist(test.loc[test["y"] == 1, "score"], bins=edges, alpha=0.6, density=True, label="fraud")
    ax.set_yscale("log")
    ax.set_xlabel("fraud score (0-99)")
    ax.set_title("Score distributions (test)")
    ax.legend()
    plots.append(_png(fig))
    # Cost curve
    fig, ax = plt.subplots(figsize=(5, 4))
    curve = run.cost_curve
    ax.semilogx(curve["flag_rate"].clip(1e-5), curve["cost"], "o-")
    ax.set_xlabel("share of events declined")
    ax.set_ylabel("expected cost")
    ax.set_title("Cost curve: decline everything above a threshold")
    plots.append(_png(fig))
    # Daily card precision
    fig, ax = plt.subplots(figsize=(5, 4))
    run.daily_cp.plot(ax=ax, marker="o")
    ax.set_ylim(0, 1)
    ax.set_title("Daily Card Precision@100 (test)")
    plots.append(_png(fig))
    # Importance
    top = run.importance.head(20).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.barh(top["feature"], top["mean_abs_shap"], label="mean |SHAP| (log-odds)")
    ax.set_title("Top features by mean |SHAP| (validation sample)")
    plots.append(_png(fig))
    return plots


def fraud_section(run: FraudRun) -> str:
    metrics = pd.DataFrame(run.metrics)
    metrics.index.name = "metric (test period)"
    thresholds = pd.DataFrame(
        {
            "calibrated probability ≥": run.threshold_choice.thresholds,
            "validation rate": {
                k: run.threshold_choice.rates[k] for k in run.threshold_choice.thresholds
            },
        }
    )
    scen = pd.DataFrame(run.scenarios).T if run.scenarios else pd.DataFrame()
    parts = [
        "<h2>Fraud model</h2>",
        f"<p>Version <code>{html.escape(run.version)}</code>. Periods (UTC, [start, end)):</p>",
        table_html(pd.DataFrame({"instant": run.split.as_dict()})),
        table_html(pd.DataFrame({"count": run.counts})),
        "<h3>Ranking metrics: model against baselines on the same test events</h3>",
        "<p>rules = number of five classic rules fired; logistic = logistic regression on the "
        "same features. Card Precision@100 is the daily mean; a card is instrument_id where "
        "present, else account_id.</p>",
        table_html(metrics),
        "<h3>Policy thresholds (chosen on validation by expected cost within budgets)</h3>",
        table_html(thresholds),
        "<h3>The policy on the test period</h3>",
        dict_html(run.decisions),
    ]
    if not scen.empty:
        scen.index.name = "scenario"
        parts += ["<h3>Recall per fraud scenario (not approved)</h3>", table_html(scen)]
    parts += ["<h3>Plots</h3>", *_fraud_plots(run)]
    imp = run.importance.head(25).set_index("feature")
    parts += ["<h3>Feature importance (gain share, mean |SHAP|)</h3>", table_html(imp)]
    return "".join(parts)


def credit_section(run: CreditRun) -> str:
    parts = [
        "<h2>Credit model</h2>",
        f"<p>Version <code>{html.escape(run.version)}</code>; features from "
        f"<b>{html.escape(run.feature_source)}</b>. Champion: LightGBM probability of default; "
        "challenger: WoE-binned logistic-regression scorecard (600 points at 50:1, 20 PDO).</p>",
        dict_html({"ranges": run.ranges} if isinstance(run.ranges, dict) else {}),
        dict_html(jsonable(run.metrics)),
    ]
    if run.groups:
        parts += ["<h3>Approval and default rates by protected group</h3>"]
        parts += ["<p>These attributes are excluded from the model's features.</p>"]
        parts.append(dict_html(jsonable(run.groups)))
    return "".join(parts)


def write_report(
    report_dir: Path,
    *,
    fraud: FraudRun | None,
    credit: CreditRun | None,
    notes: list[str],
    config: dict[str, Any],
) -> Path:
    """Write index.html and metrics.json into `report_dir`; returns the HTML path."""
    report_dir = Path(report_dir)
    metrics: dict[str, Any] = {"notes": notes, "config": config}
    body = ["<h1>Model evaluation report</h1>"]
    all_notes = list(notes) + (fraud.notes if fraud else []) + (credit.notes if credit else [])
    if all_notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in all_notes)
        body.append(f'<div class="note"><b>What was missing or left out</b><ul>{items}</ul></div>')
    if fraud is not None:
        body.append(fraud_section(fraud))
        metrics["fraud"] = {
            "version": fraud.version,
            **fraud.metrics_for_manifest(),
            "scenarios": fraud.scenarios,
            "thresholds": fraud.threshold_choice.thresholds,
            "importance": fraud.importance.head(30).to_dict(orient="records"),
            "daily_card_precision_at_100": {str(k): float(v) for k, v in fraud.daily_cp.items()},
        }
    if credit is not None:
        body.append(credit_section(credit))
        metrics["credit"] = {"version": credit.version, **credit.metrics_for_manifest()}
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Risk model report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>"
    )
    atomic_write_bytes(report_dir / "index.html", page.encode())
    atomic_write_json(report_dir / "metrics.json", jsonable(metrics))
    return report_dir / "index.html"
