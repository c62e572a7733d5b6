"""Exact TreeSHAP on the compiled forest: LightGBM's ``pred_contrib`` values, far cheaper a row.

Why: LightGBM's TreeSHAP (Lundberg's path algorithm) costs O(leaves x depth²) per tree and
row, 3-5 ms on the 488-tree fraud model, which every non-approve decision pays. Most of that
work does not depend on the row and can be done once, when the model loads.

How. Path-dependent TreeSHAP splits over leaves. Take a leaf with value ``v`` whose path
tests ``k`` distinct features ``U``. For a feature ``j`` in ``U`` let ``z_j`` be the product
of the cover fractions (child count / parent count) of the path's nodes on ``j``, and
``o_j`` = 1 if the row takes the path's direction at every one of them, else 0. The leaf's
share of the game is ``f(S) = v · Π_{j∈U} (o_j if j ∈ S else z_j)``; features outside ``U``
are dummies. With ``O = {j : o_j = 1}``, ``W = Π_{j∈U\\O} z_j`` and
``G(P) = Σ_{S⊆P} |S|!(k-1-|S|)!/k! · Π_{j∈P\\S} z_j``, its Shapley values are::

    φ_i = -v · W · G(O)                    for i in U \\ O
    φ_i =  v · (1 - z_i) · W · G(O \\ {i})  for i in O

``G`` depends only on the leaf and the pattern, so `ExactTreeShap` tabulates ``v · G(P)`` for
all ``2^k`` subsets of a leaf with ``k <= table_max_features`` when it loads (``8 · 2^k``
bytes). A row then costs, per leaf, one pass over its path to find ``O`` and ``k`` updates:
O(leaves x (depth + k)) instead of O(leaves x depth²). A leaf with more distinct features
computes ``G`` from the polynomial ``Π_{j∈O} (y + z_j)``, whose coefficient of ``y^m`` is
``Σ_{|S|=m} Π_{j∈O\\S} z_j``, dividing ``(y + z_i)`` back out for each ``i`` in ``O``:
O(k²), as LightGBM does. The bias is LightGBM's ``ExpectedValue`` of each tree.

The split decisions are the compiled forest's, so they are LightGBM's (`risk_service.forest`);
the values equal ``Booster.predict(X, pred_contrib=True)`` to float rounding (the sums run in
another order), checked on synthetic and the committed models in tests/test_treeshap.py.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numba
import numpy as np

from risk_service.forest import (
    CATEGORICAL,
    FEATURE,
    FLAGS,
    K_ZERO_THRESHOLD,
    LEFT,
    RIGHT,
    CompiledForest,
    _as_rows,
    _categorical_left,
    _floats,
    _numerical_left,
    _parse_model_text,
)

log = logging.getLogger("risk_service.treeshap")

# Leaves with at most this many distinct features get a table (2^k float64 values); the
# fraud model's 15,128 leaves then hold 2.5M values (20 MB) and 1,801 leaves are computed.
TABLE_MAX_FEATURES = 10
MAX_PATH_FEATURES = 62  # patterns are int64 bit masks


@numba.njit(cache=True, nogil=True)
def _shapley_weights(max_k: int) -> np.ndarray:
    """w[k, m] = m! (k-1-m)! / k!: the Shapley weight of a coalition of m among k players."""
    w = np.zeros((max_k + 1, max_k + 1), dtype=np.float64)
    for k in range(1, max_k + 1):
        for m in range(k):
            w[k, m] = math.exp(math.lgamma(m + 1) + math.lgamma(k - m) - math.lgamma(k + 1))
    return w


@numba.njit(cache=True, nogil=True)
def _build_tables(
    leaf_k: np.ndarray,
    leaf_slot_start: np.ndarray,
    slot_z: np.ndarray,
    leaf_value: np.ndarray,
    table_start: np.ndarray,
    tables: np.ndarray,
    weights: np.ndarray,
) -> None:
    """tables[table_start[l] + P] = v · W(P) · G(P) for every subset P of leaf l's features,
    where W(P) = Π z over the features not in P."""
    for leaf in range(leaf_k.shape[0]):
        start = table_start[leaf]
        if start < 0:
            continue
        k = leaf_k[leaf]
        s0 = leaf_slot_start[leaf]
        size = 1 << k
        # coefficients of Π_{j∈P} (y + z_j), built from P without its lowest member
        poly = np.zeros((size, k + 1), dtype=np.float64)
        poly[0, 0] = 1.0
        v = leaf_value[leaf]
        for subset in range(size):
            n = 0
            if subset:
                low = 0
                while (subset >> low) & 1 == 0:
                    low += 1
                prev = subset & (subset - 1)
                z = slot_z[s0 + low]
                rest = prev
                while rest:
                    rest &= rest - 1
                    n += 1
                poly[subset, 0] = z * poly[prev, 0]
                for m in range(1, n + 2):
                    poly[subset, m] = poly[prev, m - 1] + z * poly[prev, m]
                n += 1
            g = 0.0
            for m in range(min(n, k - 1) + 1):
                g += weights[k, m] * poly[subset, m]
            w_out = 1.0
            for s in range(k):
                if (subset >> s) & 1 == 0:
                    w_out *= slot_z[s0 + s]
            tables[start + subset] = v * w_out * g


@numba.njit(cache=True, nogil=True)
def _shap_kernel(
    X: np.ndarray,
    nodes: np.ndarray,
    thresholds: np.ndarray,
    cat_bits: np.ndarray,
    leaf_k: np.ndarray,
    leaf_path_start: np.ndarray,
    path_step: np.ndarray,
    leaf_slot_start: np.ndarray,
    slot_feature: np.ndarray,
    slot_z: np.ndarray,
    slot_c: np.ndarray,
    leaf_value: np.ndarray,
    table_start: np.ndarray,
    tables: np.ndarray,
    weights: np.ndarray,
    bias: float,
    n_features: int,
) -> np.ndarray:
    """Per row: (num_features + 1) SHAP values in raw-margin units, the bias last."""
    n_rows = X.shape[0]
    n_nodes = nodes.shape[0]
    out = np.zeros((n_rows, n_features + 1), dtype=np.float64)
    went_left = np.empty(n_nodes, dtype=np.uint8)
    max_k = weights.shape[0] - 1
    poly = np.empty(max_k + 2, dtype=np.float64)
    for r in range(n_rows):
        # the row's direction at every split node, exactly as `_forest_kernel` decides it
        for node in range(n_nodes):
            fval = X[r, nodes[node, FEATURE]]
            if -K_ZERO_THRESHOLD <= fval <= K_ZERO_THRESHOLD:
                fval = 0.0
            flags = nodes[node, FLAGS]
            if flags & CATEGORICAL:
                went_left[node] = _categorical_left(
                    fval, flags, nodes[node, 4], nodes[node, 5], cat_bits
                )
            else:
                went_left[node] = _numerical_left(fval, flags, thresholds[node])
        phi = out[r]
        for leaf in range(leaf_k.shape[0]):
            k = leaf_k[leaf]
            if k == 0:
                continue  # a one-leaf tree: all of it is bias
            s0 = leaf_slot_start[leaf]
            unmet = 0  # bit s: the row fails one of the path's conditions on slot s's feature
            for p in range(leaf_path_start[leaf], leaf_path_start[leaf + 1]):
                # branch-free: about half of these tests go each way, unpredictably
                step = path_step[p]  # node << 7 | slot << 1 | 1 if the path goes left
                fails = (np.int64(went_left[step >> 7]) ^ step) & 1
                unmet |= fails << ((step >> 1) & 63)
            met = ((1 << k) - 1) ^ unmet
            start = table_start[leaf]
            if start >= 0:
                r_met = -tables[start + met]
                for s in range(k):
                    bit = 1 << s
                    up = slot_c[s0 + s] * tables[start + (met ^ bit)]
                    phi[slot_feature[s0 + s]] += up if met & bit else r_met
                continue
            w_out = 1.0  # Π z over the unmet features
            for s in range(k):
                if (unmet >> s) & 1:
                    w_out *= slot_z[s0 + s]
            # no table: G from the polynomial of the met features
            v = leaf_value[leaf]
            poly[0] = 1.0
            n = 0
            for s in range(k):
                if (met >> s) & 1:
                    z = slot_z[s0 + s]
                    poly[n + 1] = poly[n]
                    for m in range(n, 0, -1):
                        poly[m] = poly[m - 1] + z * poly[m]
                    poly[0] = z * poly[0]
                    n += 1
            g_met = 0.0
            for m in range(min(n, k - 1) + 1):
                g_met += weights[k, m] * poly[m]
            for s in range(k):
                f = slot_feature[s0 + s]
                if (met >> s) & 1 == 0:
                    phi[f] -= v * w_out * g_met
                    continue
                # divide (y + z) out: q has degree n - 1
                z = slot_z[s0 + s]
                q = poly[n]
                g = weights[k, n - 1] * q
                for m in range(n - 1, 0, -1):
                    q = poly[m] - z * q
                    g += weights[k, m - 1] * q
                phi[f] += v * (1.0 - z) * w_out * g
        phi[n_features] = bias
    return out


class ExactTreeShap:
    """Path-dependent TreeSHAP of a compiled forest (see the module docstring).

    Calls are pure functions of read-only arrays and the input (one instance can be shared by
    threads; the kernel releases the GIL). Raises ValueError for a model whose text has no
    ``leaf_count`` / ``internal_count`` (covers) or a path with more than 62 distinct features.
    """

    def __init__(
        self,
        model_str: str,
        forest: CompiledForest,
        *,
        table_max_features: int = TABLE_MAX_FEATURES,
    ) -> None:
        _, trees = _parse_model_text(model_str)
        if len(trees) != forest.num_trees:
            raise ValueError("the model text and the compiled forest have different trees")
        self.num_features = forest.num_features
        self._forest = forest
        leaves = _Leaves(forest)
        bias = 0.0
        for t, tree in enumerate(trees):
            bias += leaves.add_tree(int(forest._roots[t]), tree)
        self.bias = bias
        arrays = leaves.arrays(table_max_features)
        (
            self._leaf_k,
            self._leaf_path_start,
            self._path_step,
            self._leaf_slot_start,
            self._slot_feature,
            self._slot_z,
            self._leaf_value,
            self._table_start,
        ) = arrays
        with np.errstate(divide="ignore"):
            self._slot_c = (1.0 - self._slot_z) / self._slot_z  # inf where z = 0: untabled
        max_k = int(self._leaf_k.max()) if len(self._leaf_k) else 0
        self._weights = _shapley_weights(max(max_k, 1))
        self._tables = np.zeros(leaves.table_size, dtype=np.float64)
        _build_tables(
            self._leaf_k,
            self._leaf_slot_start,
            self._slot_z,
            self._leaf_value,
            self._table_start,
            self._tables,
            self._weights,
        )
        for array in (self._tables, self._weights, self._slot_c, *arrays):
            array.flags.writeable = False
        self.table_bytes = int(self._tables.nbytes)
        self.contributions(np.zeros((1, self.num_features)))  # compile / load the kernel now

    def contributions(self, X: Any) -> np.ndarray:
        """SHAP values per row in raw-margin units: float64 (n, num_features + 1), the bias
        last, as LightGBM's ``pred_contrib``."""
        rows = _as_rows(X, self.num_features)
        f = self._forest
        out: np.ndarray = _shap_kernel(
            rows,
            f._nodes,
            f._thresholds,
            f._cat_bits,
            self._leaf_k,
            self._leaf_path_start,
            self._path_step,
            self._leaf_slot_start,
            self._slot_feature,
            self._slot_z,
            self._slot_c,
            self._leaf_value,
            self._table_start,
            self._tables,
            self._weights,
            self.bias,
            self.num_features,
        )
        return out

    def __repr__(self) -> str:
        tabled = int((self._table_start >= 0).sum())
        return (
            f"ExactTreeShap(leaves={len(self._leaf_k)}, tabled={tabled}, "
            f"table_bytes={self.table_bytes})"
        )


def compile_or_none(model_text: str, forest: CompiledForest, what: str) -> ExactTreeShap | None:
    """The model's compiled TreeSHAP, or None (logged) where it cannot be built; `shap_values`
    then asks LightGBM."""
    try:
        return ExactTreeShap(model_text, forest)
    except ValueError as exc:  # e.g. a text model without node counts
        log.warning("%s: TreeSHAP falls back to LightGBM's pred_contrib (%s)", what, exc)
        return None


def shap_values(treeshap: ExactTreeShap | None, booster: Any, X: Any) -> np.ndarray:
    """TreeSHAP contributions per row without the bias column: compiled, else LightGBM's on one
    thread (its default OpenMP threads inside web workers collapse their throughput)."""
    if treeshap is not None:
        return treeshap.contributions(X)[:, :-1]
    contrib = booster.predict(np.asarray(X, dtype=np.float64), pred_contrib=True, num_threads=1)
    return np.asarray(contrib, dtype=np.float64)[:, :-1]


class _Leaves:
    """Each leaf's path (node, direction, feature slot) and its features' cover products.

    Node and leaf numbers are the compiled forest's global ones, so the kernel reads the
    forest's decisions directly.
    """

    def __init__(self, forest: CompiledForest) -> None:
        self.nodes = np.asarray(forest._nodes)
        self.leaf_values = np.asarray(forest._leaf_values)
        self.n_leaves = len(self.leaf_values)
        self.leaf_k = np.zeros(self.n_leaves, dtype=np.int64)
        self.paths: list[list[tuple[int, bool, int]]] = [[] for _ in range(self.n_leaves)]
        self.slots: list[list[tuple[int, float]]] = [[] for _ in range(self.n_leaves)]
        self.node_base = self.leaf_base = 0
        self.table_size = 0  # values in all leaves' tables, set by `arrays`

    def add_tree(self, root: int, tree: dict[str, str]) -> float:
        """Record the tree's leaves; returns its expected value (LightGBM's ExpectedValue)."""
        leaf_count = _floats(tree.get("leaf_count", ""))
        num_leaves = int(tree["num_leaves"])
        values = self.leaf_values[self.leaf_base : self.leaf_base + num_leaves]
        if num_leaves == 1:
            self.leaf_base += 1
            return float(values[0])
        internal = _floats(tree.get("internal_count", ""))
        if len(leaf_count) != num_leaves or len(internal) != num_leaves - 1:
            raise ValueError("TreeSHAP needs the text model's leaf_count and internal_count")
        total = internal[0]
        expected = 0.0
        for i in range(num_leaves):
            expected += (leaf_count[i] / total) * values[i]
        node_base, leaf_base = self.node_base, self.leaf_base

        def count(node: int) -> float:
            """Training rows that reached a node (leaves are negative: ~global leaf)."""
            if node < 0:
                return float(leaf_count[-node - 1 - leaf_base])
            return float(internal[node - node_base])

        # depth-first walk: (node, path so far, slot of each feature, cover product per slot)
        stack: list[tuple[int, list[tuple[int, bool, int]], dict[int, int], list[float]]] = [
            (root, [], {}, [])
        ]
        while stack:
            node, path, slot_of, zs = stack.pop()
            if node < 0:
                leaf = -node - 1
                self.paths[leaf] = path
                features = sorted(slot_of, key=slot_of.__getitem__)
                self.slots[leaf] = list(zip(features, zs, strict=True))
                self.leaf_k[leaf] = len(features)
                continue
            feature = int(self.nodes[node, FEATURE])
            parent = count(node)
            children = ((int(self.nodes[node, LEFT]), True), (int(self.nodes[node, RIGHT]), False))
            for child, left in children:
                slots = dict(slot_of)
                child_zs = list(zs)
                slot = slots.setdefault(feature, len(slots))
                fraction = count(child) / parent
                if slot == len(child_zs):
                    child_zs.append(fraction)
                else:
                    child_zs[slot] *= fraction
                if len(slots) > MAX_PATH_FEATURES:
                    raise ValueError(f"a path tests more than {MAX_PATH_FEATURES} features")
                stack.append((child, [*path, (node, left, slot)], slots, child_zs))
        self.node_base += num_leaves - 1
        self.leaf_base += num_leaves
        return expected

    def arrays(self, table_max_features: int) -> tuple[np.ndarray, ...]:
        path_start = np.zeros(self.n_leaves + 1, dtype=np.int64)
        slot_start = np.zeros(self.n_leaves + 1, dtype=np.int64)
        path_start[1:] = np.cumsum([len(p) for p in self.paths])
        slot_start[1:] = np.cumsum([len(s) for s in self.slots])
        flat_paths = [step for path in self.paths for step in path]
        flat_slots = [slot for slots in self.slots for slot in slots]
        table_start = np.full(self.n_leaves, -1, dtype=np.int64)
        offset = 0
        for leaf, k in enumerate(self.leaf_k):
            # a zero cover fraction (an empty child) would divide by zero in the kernel
            if 0 < k <= table_max_features and all(z > 0.0 for _, z in self.slots[leaf]):
                table_start[leaf] = offset
                offset += 1 << int(k)
        self.table_size = offset
        return (
            self.leaf_k,
            path_start,
            np.array([n << 7 | slot << 1 | left for n, left, slot in flat_paths], dtype=np.int32),
            slot_start,
            np.array([s[0] for s in flat_slots], dtype=np.int32),
            np.array([s[1] for s in flat_slots], dtype=np.float64),
            np.ascontiguousarray(self.leaf_values, dtype=np.float64),
            table_start,
        )
