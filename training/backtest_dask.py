"""Point-in-time features on a Dask cluster, exactly equal to the single-process computation.

Every history feature belongs to one entity's state: the account's windows read
only that account's rows, a device's distinct accounts only that device's rows.
So the work splits into *tasks*, one per (state column, query column) pair: the
rows that update the state are those whose state column holds the entity, the
rows that read it are those whose query column holds it. For each task the rows
are hashed by entity into partitions; a partition holds every row whose state
*or* query entity hashes to it (a transfer lands in its payer's and its payee's
partition for the inflow features), and `compute_offline_features` on it is
exact for the columns that task owns, for the rows whose query entity hashes to
it. Entity kinds therefore partition differently: by account, by device, by
merchant, and so on. Request-time and profile features need no history and go by
row. Rows keep their input order inside a partition, so ties on the timestamp
resolve as in the whole table.

The driver reads the table and cuts it; workers do the feature work. Histories
larger than the driver's memory would read their partitions from Parquet on the
workers instead: not built yet.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd

from risk_service.features import FEATURE_NAMES, compute_offline_features
from risk_service.features.spec import DISTINCTS, ENTITY_KEYS, LABELS, ROLLINGS, TIME_SINCE

# Ratios and travel read from one entity's state too.
_DERIVED = {
    "amount_to_account_mean_30d": "account",
    "km_from_previous_location": "account",
    "speed_kmh_from_previous_location": "account",
    "amount_to_instrument_mean_30d": "instrument",
    "amount_to_merchant_mean_7d": "merchant",
    "merchant_known_fraud_rate_30d": "merchant",
}
ROW_TASK = ("", "")  # request-time and profile features: any partition of rows


def feature_tasks() -> dict[tuple[str, str], list[str]]:
    """Features by (state column, query column); every feature in exactly one task."""
    owner: dict[str, tuple[str, str]] = {}
    for rolling in ROLLINGS:
        for output in rolling.outputs:
            owner[output.feature] = (ENTITY_KEYS[rolling.state], output.query)
    for distinct in DISTINCTS:
        key = ENTITY_KEYS[distinct.state]
        for feature, _ in distinct.windows:
            owner[feature] = (key, key)
        if distinct.first_seen is not None:
            owner[distinct.first_seen] = (key, key)
    for label in LABELS:
        owner[label.feature] = (ENTITY_KEYS[label.state], ENTITY_KEYS[label.state])
    for kind, feature in TIME_SINCE.items():
        owner[feature] = (ENTITY_KEYS[kind], ENTITY_KEYS[kind])
    for feature, kind in _DERIVED.items():
        owner[feature] = (ENTITY_KEYS[kind], ENTITY_KEYS[kind])
    tasks: dict[tuple[str, str], list[str]] = defaultdict(list)
    for feature in FEATURE_NAMES:
        tasks[owner.get(feature, ROW_TASK)].append(feature)
    return dict(tasks)


def _bucket(values: pd.Series | None, parts: int, n: int) -> np.ndarray:
    """Partition of each row's entity (-1 where the row has none): a hash of the id string."""
    if values is None:
        return np.full(n, -1, dtype=np.int64)
    missing = values.isna().to_numpy()
    hashed = pd.util.hash_array(values.astype(str).to_numpy(object), categorize=False)
    out = (hashed % np.uint64(parts)).astype(np.int64)
    out[missing] = -1
    return out


def _part_features(
    events: pd.DataFrame, accounts: pd.DataFrame | None, keep: np.ndarray, columns: list[str]
) -> pd.DataFrame:
    """Runs on a worker: the task's columns for the rows flagged in `keep`."""
    X = compute_offline_features(events, accounts)
    return X.loc[keep, columns]


def compute_features_on_dask(
    events: pd.DataFrame, accounts: pd.DataFrame | None, scheduler: str
) -> np.ndarray:
    """The FEATURE_NAMES matrix of `events` (input order), computed on a Dask cluster.

    `scheduler` is "local" (a LocalCluster of two single-threaded worker processes,
    started and stopped here) or the address of a running scheduler.
    """
    from distributed import Client, LocalCluster

    cluster = None
    if scheduler == "local":
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = Client(cluster if cluster is not None else scheduler)
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})))
        parts = 2 * workers
        frame = events.reset_index(drop=True)
        n = len(frame)
        futures = []
        remote_accounts = client.scatter(accounts, broadcast=True) if accounts is not None else None
        for (state_col, query_col), columns in feature_tasks().items():
            if (state_col, query_col) == ROW_TASK:
                by_query = np.arange(n) % parts
                by_state = by_query
            else:
                by_state = _bucket(frame.get(state_col), parts, n)
                by_query = _bucket(frame.get(query_col), parts, n)
            for p in range(parts):
                rows = np.flatnonzero(
                    (by_state == p) | (by_query == p) | ((by_query == -1) & (p == 0))
                )
                if len(rows) == 0:
                    continue
                keep = (by_query[rows] == p) | ((by_query[rows] == -1) & (p == 0))
                subset = frame.iloc[rows]
                acc = remote_accounts if (state_col, query_col) == ROW_TASK else None
                futures.append(
                    client.submit(_part_features, subset, acc, keep, columns, pure=False)
                )
        pieces: list[Any] = client.gather(futures)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    out = pd.DataFrame(np.nan, index=pd.RangeIndex(n), columns=list(FEATURE_NAMES))
    for piece in pieces:
        out.loc[piece.index, piece.columns] = piece.to_numpy()
    return out.to_numpy(np.float64)
