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
    biggest = 0
    for leaf in range(leaf_k.shape[0]):
        if table_start[leaf] >= 0:
            biggest = max(biggest, leaf_k[leaf])
    # row P: coefficients of Π_{j∈P} (y + z_j), built from P without its lowest member
    poly = np.empty((1 << biggest, biggest + 1), dtype=np.float64)
    w_out = np.empty(1 << biggest, dtype=np.float64)
    for leaf in range(leaf_k.shape[0]):
        start = table_start[leaf]
        if start < 0:
            continue
        k = leaf_k[leaf]
        s0 = leaf_slot_start[leaf]
        size = 1 << k
        v = leaf_value[leaf]
        w_out[size - 1] = 1.0  # from the full set down: add one missing feature's z
        for subset in range(size - 2, -1, -1):
            low = 0
            while (subset >> low) & 1:
                low += 1
            w_out[subset] = w_out[subset | (1 << low)] * slot_z[s0 + low]
        for subset in range(size):
            n = 0  # members of subset
            if subset == 0:
                poly[0, 0] = 1.0
            else:
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
                for m in range(1, n + 1):
                    poly[subset, m] = poly[prev, m - 1] + z * poly[prev, m]
                poly[subset, n + 1] = poly[prev, n]
                n += 1
            g = 0.0
            for m in range(min(n, k - 1) + 1):
                g += weights[k, m] * poly[subset, m]
            tables[start + subset] = v * w_out[subset] * g


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
        if len(forest._nodes) >= 1 << 24:
            raise ValueError("forest too large for TreeSHAP's packed paths (2^24 split nodes)")
        node_count, leaf_count, tree_leaf_start = _covers(trees)
        self._leaf_value = forest._leaf_values
        walked = _walk(
            forest._roots,
            forest._nodes,
            node_count,
            leaf_count,
            self._leaf_value,
            tree_leaf_start,
            self.num_features,
        )
        self._leaf_k, self._leaf_path_start, self._path_step = walked[:3]
        self._slot_feature, self._slot_z, self.bias = walked[3:]
        if (self._leaf_k < 0).any():
            raise ValueError(f"a path tests more than {MAX_PATH_FEATURES} features")
        self._table_start = self._tables_layout(table_max_features)
        arrays = (*walked[:5], self._table_start)
        with np.errstate(divide="ignore"):
            self._slot_c = (1.0 - self._slot_z) / self._slot_z  # inf where z = 0: untabled
        max_k = int(self._leaf_k.max()) if len(self._leaf_k) else 0
        self._weights = _shapley_weights(max(max_k, 1))
        self._tables = np.zeros(self._table_size, dtype=np.float64)
        _build_tables(
            self._leaf_k,
            self._leaf_path_start,
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

    def _tables_layout(self, table_max_features: int) -> np.ndarray:
        """Where each leaf's table starts (-1: none), and the tables' total size.

        A leaf gets one if it has at most `table_max_features` features and no zero cover
        fraction (the kernel divides by them)."""
        k = self._leaf_k
        depth = np.diff(self._leaf_path_start)
        leaf_of = np.repeat(np.arange(len(k)), depth)
        position = np.arange(len(leaf_of)) - self._leaf_path_start[leaf_of]
        zero = (position < k[leaf_of]) & (self._slot_z == 0.0)
        has_zero = np.bincount(leaf_of[zero], minlength=len(k)) > 0
        tabled = (k > 0) & (k <= table_max_features) & ~has_zero
        sizes = np.where(tabled, np.left_shift(1, np.minimum(k, 62)), 0)
        self._table_size = int(sizes.sum())
        return np.where(tabled, np.cumsum(sizes) - sizes, -1)

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
            self._leaf_path_start,  # a leaf's slots start where its path does
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


def _covers(trees: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training rows per split node and per leaf, in the compiled forest's global order, and
    where each tree's leaves start."""
    node_counts: list[np.ndarray] = [np.zeros(0)]
    leaf_counts: list[np.ndarray] = [np.zeros(0)]
    tree_leaf_start = np.zeros(len(trees) + 1, dtype=np.int64)
    for t, tree in enumerate(trees):
        num_leaves = int(tree["num_leaves"])
        tree_leaf_start[t + 1] = tree_leaf_start[t] + num_leaves
        if num_leaves == 1:  # all bias: its count is never read
            leaf_counts.append(np.zeros(1))
            continue
        leaves = _floats(tree.get("leaf_count", ""))
        internal = _floats(tree.get("internal_count", ""))
        if len(leaves) != num_leaves or len(internal) != num_leaves - 1:
            raise ValueError("TreeSHAP needs the text model's leaf_count and internal_count")
        node_counts.append(internal)
        leaf_counts.append(leaves)
    return np.concatenate(node_counts), np.concatenate(leaf_counts), tree_leaf_start


@numba.njit(cache=True, nogil=True)
def _walk(
    roots: np.ndarray,
    nodes: np.ndarray,
    node_count: np.ndarray,
    leaf_count: np.ndarray,
    leaf_value: np.ndarray,
    tree_leaf_start: np.ndarray,
    n_features: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Each leaf's path and features: (leaf_k, path_start, path_step, slot_feature, slot_z,
    bias); a leaf's slots start where its path does; leaf_k = -1 marks a path over
    MAX_PATH_FEATURES.

    A path step packs ``node << 7 | slot << 1 | 1 if the path goes left``; a leaf's slots
    number its features in order of first appearance from the root, and slot_z is the
    product of the cover fractions (child count / parent count) of its nodes on that feature.
    The bias is the sum of the trees' expected values, as LightGBM's ``ExpectedValue``.
    """
    n_leaves = leaf_value.shape[0]
    depth = np.zeros(n_leaves, dtype=np.int64)
    max_depth = 0
    stack = np.empty((2 * nodes.shape[0] + 2, 2), dtype=np.int64)  # (node, depth)
    for t in range(roots.shape[0]):  # pass 1: leaf depths
        stack[0, 0], stack[0, 1], sp = roots[t], 0, 1
        while sp:
            sp -= 1
            node, d = stack[sp, 0], stack[sp, 1]
            if node < 0:
                depth[-node - 1] = d
                max_depth = max(max_depth, d)
                continue
            stack[sp, 0], stack[sp, 1] = nodes[node, RIGHT], d + 1
            stack[sp + 1, 0], stack[sp + 1, 1] = nodes[node, LEFT], d + 1
            sp += 2
    path_start = np.zeros(n_leaves + 1, dtype=np.int64)
    for leaf in range(n_leaves):
        path_start[leaf + 1] = path_start[leaf] + depth[leaf]
    total = path_start[n_leaves]
    path_step = np.zeros(total, dtype=np.int32)
    slot_feature = np.zeros(total, dtype=np.int32)
    slot_z = np.zeros(total, dtype=np.float64)
    leaf_k = np.zeros(n_leaves, dtype=np.int64)
    path_node = np.empty(max_depth + 1, dtype=np.int64)  # the current path, by depth
    path_left = np.empty(max_depth + 1, dtype=np.int64)
    slot_of = np.full(n_features, -1, dtype=np.int64)
    parents = np.empty((2 * nodes.shape[0] + 2, 2), dtype=np.int64)  # (parent, went left)
    bias = 0.0
    for t in range(roots.shape[0]):  # pass 2: paths in leaf order
        first, last = tree_leaf_start[t], tree_leaf_start[t + 1]
        if roots[t] < 0:
            bias += leaf_value[first]
            continue
        everyone = node_count[roots[t]]
        expected = 0.0
        for leaf in range(first, last):
            expected += (leaf_count[leaf] / everyone) * leaf_value[leaf]
        bias += expected
        stack[0, 0], stack[0, 1], sp = roots[t], 0, 1
        parents[0, 0], parents[0, 1] = -1, 0
        while sp:
            sp -= 1
            node, d = stack[sp, 0], stack[sp, 1]
            if d > 0:
                path_node[d - 1], path_left[d - 1] = parents[sp, 0], parents[sp, 1]
            if node >= 0:
                stack[sp, 0], stack[sp, 1] = nodes[node, RIGHT], d + 1
                parents[sp, 0], parents[sp, 1] = node, 0
                stack[sp + 1, 0], stack[sp + 1, 1] = nodes[node, LEFT], d + 1
                parents[sp + 1, 0], parents[sp + 1, 1] = node, 1
                sp += 2
                continue
            leaf = -node - 1
            k = 0
            s0 = path_start[leaf]  # a leaf's slots sit where its path does (k <= depth)
            for i in range(d):
                parent = path_node[i]
                child = nodes[parent, LEFT] if path_left[i] else nodes[parent, RIGHT]
                below = leaf_count[-child - 1] if child < 0 else node_count[child]
                fraction = below / node_count[parent]
                feature = nodes[parent, FEATURE]
                slot = slot_of[feature]
                if slot < 0:
                    slot = slot_of[feature] = k
                    slot_feature[s0 + k] = feature
                    slot_z[s0 + k] = fraction
                    k += 1
                else:
                    slot_z[s0 + slot] *= fraction
                path_step[path_start[leaf] + i] = (
                    (parent << 7) | (min(slot, 63) << 1) | path_left[i]
                )
            for i in range(k):
                slot_of[slot_feature[s0 + i]] = -1
            leaf_k[leaf] = k if k <= MAX_PATH_FEATURES else -1
    return leaf_k, path_start, path_step, slot_feature, slot_z, bias
