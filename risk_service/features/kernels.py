"""Vectorised point-in-time building blocks for the offline path.

Rows are in canonical order (rank ``i`` = position after a stable sort on timestamp),
so "earlier" is simply "smaller rank".  Per-entity windows become two binary searches
in the data rows sorted by ``(entity, rank)``; the distinct-set LRU is replayed by a
numba kernel with a Fenwick tree.
"""

from __future__ import annotations

import numba
import numpy as np

from risk_service.features.spec import Window


def window_start_rank(ms: np.ndarray, window: Window) -> np.ndarray:
    """Per row, the first rank whose bucket is inside the row's window.

    A row ``j`` counts for row ``i`` iff ``floor(ms_j/b) > floor(ms_i/b) - n``, i.e.
    ``ms_j >= (floor(ms_i/b) - n + 1) * b``; ``ms`` is sorted so that is a rank bound.
    """
    b = window.bucket_ms
    lower_ms = (ms // b - window.n_buckets + 1) * b
    return np.searchsorted(ms, lower_ms, side="left").astype(np.int64)


class SortedRows:
    """Data rows of one entity column, sorted by (entity code, rank), for range queries."""

    def __init__(self, codes: np.ndarray, mask: np.ndarray, n: int) -> None:
        rows = np.flatnonzero(mask & (codes >= 0))
        ent = codes[rows]
        order = np.argsort(ent, kind="stable")
        self.rows = rows[order]
        self.n = n
        self.comp = ent[order] * np.int64(n) + self.rows

    def bounds(
        self, q_codes: np.ndarray, lo_rank: np.ndarray, hi_rank: np.ndarray, q_order: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Index range of this entity's data rows with ``lo_rank <= rank < hi_rank``.

        ``q_order`` sorts the queries by (entity, rank); both bounds are non-decreasing in
        that order, so the binary searches walk memory forward (much faster than random).
        """
        base = np.maximum(q_codes[q_order], 0) * np.int64(self.n)
        lo = np.empty(len(q_codes), dtype=np.int64)
        hi = np.empty(len(q_codes), dtype=np.int64)
        lo[q_order] = np.searchsorted(self.comp, base + lo_rank[q_order], side="left")
        hi[q_order] = np.searchsorted(self.comp, base + hi_rank[q_order], side="left")
        return lo, hi

    def prefix(self, values: np.ndarray) -> np.ndarray:
        """Prefix sums (leading 0) of ``values`` (per rank) over the sorted data rows."""
        out = np.zeros(len(self.rows) + 1, dtype=values.dtype)
        np.cumsum(values[self.rows], out=out[1:])
        return out


def previous_in_group(codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per row with an entity, the rank of the entity's previous row with ``mask`` (else -1)."""
    n = len(codes)
    rows = np.flatnonzero(codes >= 0)
    order = rows[np.argsort(codes[rows], kind="stable")]
    g = codes[order]
    pos = np.arange(len(order))
    start = np.zeros(len(order), dtype=np.int64)
    if len(order):
        new_group = np.empty(len(order), dtype=bool)
        new_group[0] = True
        new_group[1:] = g[1:] != g[:-1]
        start = np.maximum.accumulate(np.where(new_group, pos, 0))
    marked = np.where(mask[order], pos, -1)
    prev = np.full(len(order), -1, dtype=np.int64)
    if len(order) > 1:
        prev[1:] = np.maximum.accumulate(marked)[:-1]
    prev = np.where(prev >= start, prev, -1)
    out = np.full(n, -1, dtype=np.int64)
    out[order] = np.where(prev >= 0, order[np.maximum(prev, 0)], -1)
    return out


@numba.njit(cache=True)
def _lru_kernel(  # pragma: no cover - compiled
    pair: np.ndarray,
    update: np.ndarray,
    ms: np.ndarray,
    lo: np.ndarray,
    n_pairs: int,
    h_bucket: int,
    h_n: int,
    cap: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Replay recency-ordered member sets over rows sorted by (entity, rank).

    A Fenwick tree marks, per (entity, member), the position of its latest update.
    A member is in the set iff it was updated before, fewer than ``cap`` other
    members were updated since (its recency rank), and its last update is inside the
    horizon.  Distinct count in a window = marks from the window start, capped.
    """
    n = len(pair)
    tree = np.zeros(n + 1, dtype=np.int64)
    last = np.full(n_pairs, -1, dtype=np.int64)
    first = np.full(n, np.nan)
    counts = np.zeros((lo.shape[0], n), dtype=np.float64)
    for i in range(n):
        # prefix sum of marks over positions [0, i)
        s_i = 0
        k = i
        while k > 0:
            s_i += tree[k]
            k -= k & -k
        p = -1
        if pair[i] >= 0:
            p = last[pair[i]]
            if p < 0:
                first[i] = 1.0
            else:
                s_p = 0
                k = p + 1
                while k > 0:
                    s_p += tree[k]
                    k -= k & -k
                in_horizon = ms[p] // h_bucket > ms[i] // h_bucket - h_n
                first[i] = 0.0 if (s_i - s_p < cap and in_horizon) else 1.0
        for w in range(lo.shape[0]):
            s_lo = 0
            k = lo[w, i]
            while k > 0:
                s_lo += tree[k]
                k -= k & -k
            counts[w, i] = min(cap, s_i - s_lo)
        if update[i]:
            if p >= 0:
                k = p + 1
                while k <= n:
                    tree[k] -= 1
                    k += k & -k
            k = i + 1
            while k <= n:
                tree[k] += 1
                k += k & -k
            last[pair[i]] = i
    return first, counts


def distinct_members(
    ent: np.ndarray,
    member: np.ndarray,
    is_data: np.ndarray,
    ms: np.ndarray,
    windows: list[Window],
    horizon: Window,
    cap: int,
) -> tuple[np.ndarray, np.ndarray]:
    """First-seen flags (NaN without member or entity) and capped distinct counts per window."""
    n = len(ent)
    rows = np.flatnonzero(ent >= 0)
    order = rows[np.argsort(ent[rows], kind="stable")]
    g_ent, g_mem = ent[order], member[order]
    comp = g_ent * np.int64(n) + order
    lo = np.empty((len(windows), len(order)), dtype=np.int64)
    for w, win in enumerate(windows):
        start = window_start_rank(ms, win)[order]
        lo[w] = np.searchsorted(comp, g_ent * np.int64(n) + start, side="left")
    has = g_mem >= 0
    pair = np.full(len(order), -1, dtype=np.int64)
    n_pairs = 0
    if has.any():
        uniq, inv = np.unique(g_ent[has] * np.int64(member.max() + 1) + g_mem[has],
                              return_inverse=True)  # fmt: skip
        pair[has] = inv
        n_pairs = len(uniq)
    upd = has & is_data[order]
    g_first, g_counts = _lru_kernel(
        pair, upd, ms[order], lo, n_pairs, horizon.bucket_ms, horizon.n_buckets, cap
    )
    first = np.full(n, np.nan)
    counts = np.full((len(windows), n), np.nan)
    first[order] = g_first
    counts[:, order] = g_counts
    return first, counts
