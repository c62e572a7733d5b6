"""Assembling a world: population, ordinary behaviour chunk by chunk, fraud, credit, decoding."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from risk_service.schema import FRAUD_SCENARIOS, column_names

from .behaviour import legit_chunk
from .config import CH, CHUNK_ACCOUNTS, DEFAULT_FRAUD_RATE, make_calendar
from .credit import assign_lines, credit_rows
from .events import Batch, concat, decode_events, ids, set_labels, timestamps, to_table
from .market import build_market
from .plan import plan_fraud
from .population import Population, build_population
from .rings import ring_events, setup_rings
from .scenarios import fraud_events

# Independent random streams, so one part changing does not reshuffle every other part.
STREAM = {"plan": 0, "market": 1, "population": 2, "rings": 3, "lines": 4, "fraud": 5, "credit": 6}
CHUNK_STREAM0 = 1000


@dataclass(frozen=True)
class Tables:
    events: pa.Table
    accounts: pa.Table
    credit: pa.Table


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _keyed(b: Batch, part: int, rng: np.random.Generator) -> pa.Table:
    """Labels plus a generation key (part, position) that breaks timestamp ties reproducibly."""
    set_labels(rng, b)
    # A browser usually shares no location (good and fraud alike): only the IP is known.
    hidden = (b["channel"] == CH["web"]) & (rng.random(len(b["t"])) < 0.7)
    b["lat"] = np.where(hidden, np.nan, b["lat"])
    b["lon"] = np.where(hidden, np.nan, b["lon"])
    b["key"] = (np.int64(part) << 32) + np.arange(len(b["t"]), dtype=np.int64)
    return to_table(b)


def build_tables(
    accounts: int,
    days: int,
    seed: int,
    start: date,
    fraud_rate: float | None,
    progress: bool = False,
    spill_dir: Path | None = None,
) -> Tables:
    """Generate the world; with spill_dir, finished chunks wait on disk instead of in memory."""
    cal = make_calendar(start, days)
    plan = plan_fraud(_rng(seed, STREAM["plan"]), accounts, days, fraud_rate or DEFAULT_FRAUD_RATE)
    market = build_market(_rng(seed, STREAM["market"]), accounts)
    pop = build_population(
        _rng(seed, STREAM["population"]), accounts, accounts - plan.ring_accounts, cal, market
    )
    rings = setup_rings(_rng(seed, STREAM["rings"]), pop, plan)
    assign_lines(_rng(seed, STREAM["lines"]), pop)

    parts: list[pa.Table] = []
    n_chunks = -(-accounts // CHUNK_ACCOUNTS)
    bar = tqdm(total=n_chunks + 2, desc="simulate", unit="step", disable=not progress)
    for i, lo in enumerate(range(0, accounts, CHUNK_ACCOUNTS)):
        rng = _rng(seed, CHUNK_STREAM0 + i)
        b = legit_chunk(
            rng, pop, lo, min(lo + CHUNK_ACCOUNTS, accounts), rings.cm_start, rings.cm_end
        )
        table = _keyed(b, i, rng)
        if spill_dir is not None:
            pq.write_table(table, spill_dir / f"part-{i:05d}.parquet", compression="none")
            table = pq.read_table(spill_dir / f"part-{i:05d}.parquet", memory_map=True)
        parts.append(table)
        bar.update()
    rng = _rng(seed, STREAM["fraud"])
    fraud = concat([ring_events(rng, pop, rings), fraud_events(rng, pop, plan, rings.mules)])
    parts.append(_keyed(fraud, n_chunks, rng))
    bar.update()
    events = decode_events(pa.concat_tables(parts), pop, pop.alloc.ip_strings())
    del parts
    tables = Tables(events, _accounts(pop), _credit(_rng(seed, STREAM["credit"]), pop))
    bar.update()
    bar.close()
    return tables


def _accounts(pop: Population) -> pa.Table:
    """The profile table, ordered by account id (which says nothing about an account's role)."""
    a = pop.a
    cols = {
        "account_id": ids("account", np.arange(pop.n)),
        "created_at": timestamps(a["created"]),
        "kyc_level": pa.array(a["kyc"].astype(np.int8)),
        "age": pa.array(a["age"].astype(np.int32)),
        "monthly_income": pa.array(np.round(a["income"].astype(np.float64), 2)),
        "home_latitude": pa.array(a["home_lat"].astype(np.float64)),
        "home_longitude": pa.array(a["home_lon"].astype(np.float64)),
        "credit_limit": pa.array(np.round(a["credit_limit"].astype(np.float64), 2)),
    }
    table = pa.table({c: cols[c] for c in column_names("accounts")})
    return table.take(pc.sort_indices(table, [("account_id", "ascending")]))


def _credit(rng: np.random.Generator, pop: Population) -> pa.Table:
    r = credit_rows(rng, pop)
    n = len(r["t"])
    width = max(7, len(str(n)))
    seq = pc.cast(pa.array(np.arange(n)), pa.string())
    cols = {
        "application_id": pc.binary_join_element_wise("c", pc.utf8_lpad(seq, width, "0"), ""),
        "account_id": ids("account", r["account"]),
        "timestamp": timestamps(r["t"]),
        "requested_limit": pa.array(r["requested"].astype(np.float64)),
        "application_type": pc.take(
            pa.array(["application", "limit_review"]), pa.array(r["kind"].astype(np.int64))
        ),
        "defaulted": pa.array(r["defaulted"]),
        "label_time": timestamps(r["label_t"]),
    }
    return pa.table({c: cols[c] for c in column_names("credit")})


def summary(t: Tables) -> dict[str, object]:
    """Row counts, fraud and default rates and per-scenario counts, for the manifest."""
    fraud = t.events.column("is_fraud").to_numpy()
    scen = t.events.column("fraud_scenario").to_pandas()
    counts = scen.value_counts()
    defaulted = t.credit.column("defaulted").to_numpy()
    return {
        "rows": {
            "events": t.events.num_rows,
            "accounts": t.accounts.num_rows,
            "credit": t.credit.num_rows,
        },
        "fraud_events": int(fraud.sum()),
        "fraud_rate": round(float(fraud.mean()) if len(fraud) else 0.0, 6),
        "scenarios": {s: int(counts.get(s, 0)) for s in FRAUD_SCENARIOS},
        "default_rate": round(float(defaulted.mean()) if len(defaulted) else 0.0, 6),
    }
