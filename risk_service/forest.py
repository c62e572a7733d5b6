"""A compiled LightGBM forest for single-row scoring, bit-for-bit equal to `Booster.predict`.

Why: `lightgbm.Booster.predict` costs ~80 µs per single row (Python wrapper, C API
parameter parsing, row conversion, OpenMP set-up), a third of the scoring budget; and
LightGBM's OpenMP threads are a hazard inside web workers. A numba kernel walking flat
node arrays evaluates the same forest in a few µs, without OpenMP, and releases the GIL.

The forest is read from LightGBM's text model (`Booster.model_to_string()`, the saved
file), i.e. LightGBM's own per-tree arrays: thresholds and leaf values at 17 significant
digits (exact round trip), decision_type bits, children, and the categorical bitsets
(cat_boundaries / cat_threshold). Not from `Booster.dump_model()`: its JSON clamps
thresholds to ±1e300 (`AvoidInf`), and LightGBM does write ``inf`` thresholds, which
would then send x = inf or x = DBL_MAX the wrong way. Evaluation follows LightGBM
(`include/LightGBM/tree.h`, `src/c_api.cpp`):

* Input: a dense row goes through `RowPairFunctionFromDenseMatrix`, which keeps only
  values with ``|x| > kZeroThreshold`` or NaN; everything else reads back as 0.0.
  ``kZeroThreshold`` is the C++ ``1e-35f``, a float32 widened to double.
* `NumericalDecision`: NaN becomes 0.0 unless the node's missing type is NaN; then a
  "missing" value (zero for missing type Zero, NaN for missing type NaN) follows
  ``default_left``; otherwise ``x <= threshold`` goes left.
* `CategoricalDecision`: ``int c = static_cast<int>(x)`` (truncation toward zero);
  ``c < 0`` goes right; NaN goes right for missing type NaN and is otherwise category 0;
  then ``c`` goes left iff it is in the node's category bitset. The cast of NaN, ±inf or
  a value outside int32 is undefined in C++: x86-64 (``cvttsd2si``) yields INT_MIN, so
  all of them go right; ARM (``fcvtzs``) saturates (same outcome for huge values) and
  maps NaN to 0, so NaN is category 0 unless the missing type is NaN. Both are mirrored.
* The margin is the sum of the trees' outputs in tree order starting from 0.0; for the
  binary objective the probability is ``1 / (1 + exp(-sigmoid * margin))``.

All trees in the text are used. `Booster.model_to_string()` and `Booster.predict()` both
default to the booster's ``best_iteration`` when it is set (a booster trained with early
stopping and ``keep_training_booster=True``), and to all trees for a booster loaded from a
model string, so `from_booster` matches `booster.predict(X)` in both cases.

Unsupported (refused with ValueError): multiclass / multi-output models, linear trees,
random-forest averaging (``average_output``).

Path attribution (`path_contributions`; Saabas, "treeinterpreter") walks the same paths
with a second kernel: each split on a row's path credits its feature with the change from
the node's value to the chosen child's, and the bias is the sum of the root values. A
split node's value is LightGBM's ``internal_value`` (what the tree would output had it
stopped there, shrinkage and the first tree's initial score included); a leaf's is its
leaf value. The text model writes ``internal_value`` with 6 significant digits only (C++
``%g``), so a credit can be off by ~1e-6 of the node values; the sum over a path still
telescopes to the exact leaf value, so bias + contributions equals `predict_raw` to float
rounding (~1e-14 on the fraud model). How it differs from LightGBM's TreeSHAP, which
stays on the booster: `risk_service.explain`.
"""

from __future__ import annotations

import math
import platform
from typing import Any

import numba
import numpy as np

# The C++ `const double kZeroThreshold = 1e-35f;`: a float32 literal widened to double.
K_ZERO_THRESHOLD = float(np.float32(1e-35))

# Node flags: LightGBM's decision_type bits (categorical, default_left, missing type << 2)
# plus one bit of ours for how this platform's C++ casts a NaN category to int.
CATEGORICAL = 1
DEFAULT_LEFT = 2
MISSING_SHIFT = 2
MISSING_NONE, MISSING_ZERO, MISSING_NAN = 0, 1, 2
NAN_IS_CATEGORY_ZERO = 16

# Columns of the int32 node table.
FEATURE, LEFT, RIGHT, FLAGS, CAT_START, CAT_WORDS = range(6)

_INT32_LOWER = -2147483649.0  # exclusive: truncation of x is an int32 iff LOWER < x < UPPER
_INT32_UPPER = 2147483648.0


def _nan_is_category_zero(machine: str | None = None) -> bool:
    """True where `static_cast<int>(NaN)` is 0 (ARM) rather than INT_MIN (x86)."""
    machine = (machine if machine is not None else platform.machine()).lower()
    return machine.startswith(("aarch64", "arm"))


# ---------------------------------------------------------------------------- kernel


@numba.njit(cache=True, nogil=True, inline="always")
def _numerical_left(fval: float, flags: int, threshold: float) -> bool:
    missing = (flags >> MISSING_SHIFT) & 3
    if missing != MISSING_NAN and math.isnan(fval):
        fval = 0.0
    if (missing == MISSING_ZERO and -K_ZERO_THRESHOLD <= fval <= K_ZERO_THRESHOLD) or (
        missing == MISSING_NAN and math.isnan(fval)
    ):
        return (flags & DEFAULT_LEFT) != 0
    return fval <= threshold


@numba.njit(cache=True, nogil=True, inline="always")
def _categorical_left(fval: float, flags: int, start: int, words: int, bits: np.ndarray) -> bool:
    if math.isnan(fval):
        if (flags & NAN_IS_CATEGORY_ZERO) == 0:
            return False  # x86: static_cast<int>(NaN) is INT_MIN, negative: right
        if ((flags >> MISSING_SHIFT) & 3) == MISSING_NAN:
            return False
        category = 0
    elif not (_INT32_LOWER < fval < _INT32_UPPER):
        return False  # INT_MIN (x86) or a saturated int32 that no bitset reaches (ARM)
    else:
        category = int(fval)  # truncation toward zero, as static_cast<int>
        if category < 0:
            return False
    word = category >> 5
    if word >= words:
        return False
    return ((bits[start + word] >> np.uint32(category & 31)) & np.uint32(1)) != 0


@numba.njit(cache=True, nogil=True, inline="always")
def _goes_left(
    fval: float, node: int, nodes: np.ndarray, thresholds: np.ndarray, cat_bits: np.ndarray
) -> bool:
    """LightGBM's decision at a split node for a row's value (every kernel's split test)."""
    if -K_ZERO_THRESHOLD <= fval <= K_ZERO_THRESHOLD:
        fval = 0.0  # the C API drops near-zero entries of a dense row
    flags = nodes[node, FLAGS]
    if flags & CATEGORICAL:
        return _categorical_left(
            fval, flags, nodes[node, CAT_START], nodes[node, CAT_WORDS], cat_bits
        )
    return _numerical_left(fval, flags, thresholds[node])


@numba.njit(cache=True, nogil=True)
def _forest_kernel(
    X: np.ndarray,
    roots: np.ndarray,
    nodes: np.ndarray,
    thresholds: np.ndarray,
    leaf_values: np.ndarray,
    cat_bits: np.ndarray,
    sigmoid: float,
) -> np.ndarray:
    """Per row, the sum of leaf values; then 1/(1+exp(-sigmoid*sum)) if sigmoid > 0."""
    n_rows = X.shape[0]
    out = np.empty(n_rows, dtype=np.float64)
    for r in range(n_rows):
        margin = 0.0
        for t in range(roots.shape[0]):
            node = roots[t]
            while node >= 0:
                left = _goes_left(X[r, nodes[node, FEATURE]], node, nodes, thresholds, cat_bits)
                node = nodes[node, LEFT] if left else nodes[node, RIGHT]
            margin += leaf_values[-node - 1]
        if sigmoid > 0.0:
            out[r] = 1.0 / (1.0 + math.exp(-sigmoid * margin))
        else:
            out[r] = margin
    return out


@numba.njit(cache=True, nogil=True)
def _path_kernel(
    X: np.ndarray,
    roots: np.ndarray,
    nodes: np.ndarray,
    thresholds: np.ndarray,
    leaf_values: np.ndarray,
    node_values: np.ndarray,
    cat_bits: np.ndarray,
) -> np.ndarray:
    """Path attribution per row: (n, num_features + 1), the bias in the last column.

    Along each tree's decision path, the change from a split node's expected value to its
    chosen child's is credited to the split feature; the bias is the sum of the roots'
    expected values (a one-leaf tree's value goes to the bias). The split test is
    `_goes_left`, inlined (a helper returning the child instead made both kernels 3x slower).
    """
    n_rows, n_features = X.shape
    out = np.zeros((n_rows, n_features + 1), dtype=np.float64)
    for r in range(n_rows):
        bias = 0.0
        for t in range(roots.shape[0]):
            node = roots[t]
            if node < 0:
                bias += leaf_values[-node - 1]
                continue
            value = node_values[node]
            bias += value
            while node >= 0:
                feature = nodes[node, FEATURE]
                left = _goes_left(X[r, feature], node, nodes, thresholds, cat_bits)
                node = nodes[node, LEFT] if left else nodes[node, RIGHT]
                child_value = node_values[node] if node >= 0 else leaf_values[-node - 1]
                out[r, feature] += child_value - value
                value = child_value
        out[r, n_features] = bias
    return out


# --------------------------------------------------------------------------- parsing


def _parse_model_text(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The header's and each tree's ``key=value`` lines (a bare key maps to "")."""
    header: dict[str, str] = {}
    trees: list[dict[str, str]] = []
    target = header
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line.startswith("end of trees"):
            break
        if line.startswith("Tree="):
            target = {}
            trees.append(target)
        elif line:
            key, _, value = line.partition("=")
            target[key] = value
    if "max_feature_idx" not in header:
        raise ValueError("not a LightGBM text model: no max_feature_idx in the header")
    return header, trees


def _floats(text: str) -> np.ndarray:
    # float() is correctly rounded and reads LightGBM's "inf" / "-inf" / "nan".
    return np.fromiter(map(float, text.split()), dtype=np.float64)


def _ints(text: str, dtype: type = np.int64) -> np.ndarray:
    return np.fromiter(map(int, text.split()), dtype=dtype)


class _Builder:
    """Concatenates LightGBM's per-tree arrays into global ones.

    Within a tree LightGBM numbers internal nodes 0..num_leaves-2 (root 0) and writes a
    leaf child as ``~leaf``; globally, node and leaf indices are offset per tree.
    """

    def __init__(self, nan_is_category_zero: bool, num_features: int) -> None:
        self.nan_is_category_zero = nan_is_category_zero
        self.num_features = num_features
        self.roots: list[int] = []
        self.tables: list[np.ndarray] = []
        self.thresholds: list[np.ndarray] = []
        self.leaf_values: list[np.ndarray] = []
        self.cat_bits: list[np.ndarray] = []
        self.node_values: list[np.ndarray] = []
        self.has_node_values = True
        self.n_nodes = self.n_leaves = self.n_words = 0

    def add_tree(self, tree: dict[str, str]) -> None:
        if tree.get("is_linear", "0") != "0":
            raise ValueError("unsupported LightGBM model: linear trees (linear_tree=true)")
        num_leaves = int(tree["num_leaves"])
        leaf_values = _floats(tree["leaf_value"])
        if len(leaf_values) != num_leaves:
            raise ValueError(f"malformed tree: {len(leaf_values)} leaf values, {num_leaves} leaves")
        if num_leaves == 1:
            self.roots.append(~self.n_leaves)
        else:
            self._add_splits(tree, num_leaves - 1)
        self.leaf_values.append(leaf_values)
        self.n_leaves += num_leaves

    def _add_splits(self, tree: dict[str, str], n: int) -> None:
        table = np.zeros((n, 6), dtype=np.int64)
        table[:, FEATURE] = _ints(tree["split_feature"])
        decision = _ints(tree["decision_type"]) & (
            CATEGORICAL | DEFAULT_LEFT | (3 << MISSING_SHIFT)
        )
        thresholds = _floats(tree["threshold"])
        for column, key in ((LEFT, "left_child"), (RIGHT, "right_child")):
            child = _ints(tree[key])
            table[:, column] = np.where(child >= 0, child + self.n_nodes, child - self.n_leaves)
        categorical = (decision & CATEGORICAL) != 0
        if categorical.any():
            if self.nan_is_category_zero:
                decision[categorical] |= NAN_IS_CATEGORY_ZERO
            self._add_bitsets(tree, table, categorical, thresholds)
        table[:, FLAGS] = decision
        if len(thresholds) != n or table[:, FEATURE].max() >= self.num_features:
            raise ValueError("malformed tree: split arrays disagree with num_leaves/features")
        self._add_node_values(tree, n)
        self.roots.append(self.n_nodes)
        self.tables.append(table)
        self.thresholds.append(thresholds)
        self.n_nodes += n

    def _add_node_values(self, tree: dict[str, str], n: int) -> None:
        """Each split node's ``internal_value``: its output had the tree stopped there."""
        values = _floats(tree.get("internal_value", ""))
        if len(values) != n:
            self.has_node_values = False  # a text model without them: no path attribution
            values = np.full(n, np.nan)
        self.node_values.append(values)

    def _add_bitsets(
        self, tree: dict[str, str], table: np.ndarray, categorical: np.ndarray, thr: np.ndarray
    ) -> None:
        """A categorical node's threshold is its index into cat_boundaries."""
        bounds = _ints(tree["cat_boundaries"])
        bits = _ints(tree["cat_threshold"], np.uint32)
        index = thr[categorical].astype(np.int64)
        table[categorical, CAT_START] = bounds[index] + self.n_words
        table[categorical, CAT_WORDS] = bounds[index + 1] - bounds[index]
        self.cat_bits.append(bits)
        self.n_words += len(bits)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """roots, node table (n_nodes, 6), thresholds, leaf values, category bitsets."""
        table = np.concatenate(self.tables) if self.tables else np.zeros((0, 6), np.int64)
        if self.n_nodes >= 2**31 or self.n_leaves >= 2**31 or self.n_words >= 2**31:
            raise ValueError("forest too large for int32 node indices")
        return (
            np.asarray(self.roots, dtype=np.int32),
            np.ascontiguousarray(table, dtype=np.int32),
            np.concatenate([np.zeros(0), *self.thresholds]),
            np.concatenate([np.zeros(0), *self.leaf_values]),
            np.concatenate([np.zeros(0, np.uint32), *self.cat_bits]).astype(np.uint32),
        )


def _sigmoid_of(objective: str) -> float | None:
    """The probability transform's slope, or None when predictions are not probabilities."""
    name, *params = objective.split() or [""]
    if name == "binary":
        for param in params:
            key, _, value = param.partition(":")
            if key == "sigmoid" and float(value) > 0.0:
                return float(value)
        raise ValueError(f"binary objective without a positive sigmoid: {objective!r}")
    if name in ("cross_entropy", "xentropy"):
        return 1.0
    return None


def _check_supported(header: dict[str, str]) -> None:
    num_class = int(header.get("num_class", "1"))
    per_iteration = int(header.get("num_tree_per_iteration", "1"))
    if num_class != 1 or per_iteration != 1:
        raise ValueError(
            "unsupported LightGBM model: multiclass / multi-output "
            f"(num_class={num_class}, num_tree_per_iteration={per_iteration})"
        )
    if "average_output" in header:
        raise ValueError("unsupported LightGBM model: average_output (boosting=rf)")


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


# ----------------------------------------------------------------------------- class


class CompiledForest:
    """A LightGBM binary/regression forest as flat read-only arrays plus a numba kernel.

    Calls are pure functions of read-only arrays and the input, so one instance can be
    shared by threads; the kernel releases the GIL.
    """

    def __init__(self, model_str: str, *, nan_is_category_zero: bool | None = None) -> None:
        """Compile a LightGBM text model (`Booster.model_to_string()` / the saved file).

        ``nan_is_category_zero`` overrides how a NaN categorical value is cast (see the
        module docstring); the default follows this machine's architecture.
        """
        header, trees = _parse_model_text(model_str)
        _check_supported(header)
        self.objective: str = header.get("objective", "")
        self.sigmoid: float | None = _sigmoid_of(self.objective)
        self.feature_names: list[str] = header.get("feature_names", "").split()
        self.num_features: int = int(header["max_feature_idx"]) + 1
        if nan_is_category_zero is None:
            nan_is_category_zero = _nan_is_category_zero()
        builder = _Builder(nan_is_category_zero, self.num_features)
        for tree in trees:
            builder.add_tree(tree)
        roots, nodes, thresholds, leaf_values, cat_bits = builder.arrays()
        self.num_trees: int = len(roots)
        self._roots = _readonly(roots)
        self._nodes = _readonly(nodes)
        self._thresholds = _readonly(thresholds)
        self._leaf_values = _readonly(leaf_values)
        self._cat_bits = _readonly(cat_bits)
        self._node_values = _readonly(np.concatenate([np.zeros(0), *builder.node_values]))
        self._has_node_values = builder.has_node_values
        self._warm()

    @classmethod
    def from_booster(cls, booster: Any) -> CompiledForest:
        """Compile the trees `booster.predict(X)` uses: all, or up to best_iteration."""
        return cls(booster.model_to_string())

    @classmethod
    def from_model_string(cls, model_str: str) -> CompiledForest:
        """Compile a saved LightGBM text model (all trees in it); LightGBM is not needed."""
        return cls(model_str)

    def predict_raw(self, X: np.ndarray) -> np.ndarray:
        """The raw margin (sum of leaf values) per row: float64, shape (n,)."""
        return self._run(X, 0.0)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(label = 1) per row, as `booster.predict(X)` for a binary objective."""
        if self.sigmoid is None:
            raise ValueError(f"predict_proba needs a binary objective, not {self.objective!r}")
        return self._run(X, self.sigmoid)

    def path_contributions(self, X: np.ndarray) -> np.ndarray:
        """Path attribution (Saabas) per row in raw-margin units: float64, shape
        (n, num_features + 1), the bias in the last column as in LightGBM's ``pred_contrib``.

        Each row's columns sum to its `predict_raw` margin (to float rounding); see the
        module docstring for what a contribution means and how close it is to TreeSHAP.
        """
        if not self._has_node_values:
            raise ValueError("path attribution needs the text model's internal_value lines")
        rows = _as_rows(X, self.num_features)
        out: np.ndarray = _path_kernel(
            rows,
            self._roots,
            self._nodes,
            self._thresholds,
            self._leaf_values,
            self._node_values,
            self._cat_bits,
        )
        return out

    def _run(self, X: np.ndarray, sigmoid: float) -> np.ndarray:
        rows = _as_rows(X, self.num_features)
        out: np.ndarray = _forest_kernel(
            rows,
            self._roots,
            self._nodes,
            self._thresholds,
            self._leaf_values,
            self._cat_bits,
            sigmoid,
        )
        return out

    def _warm(self) -> None:
        """Compile (or load from numba's cache) now, not on the first request."""
        row = np.zeros((1, self.num_features), dtype=np.float64)
        self.predict_raw(row)
        if self._has_node_values:
            self.path_contributions(row)

    def __repr__(self) -> str:
        return (
            f"CompiledForest(trees={self.num_trees}, nodes={len(self._nodes)}, "
            f"features={self.num_features}, objective={self.objective!r})"
        )


def _as_rows(X: Any, num_features: int) -> np.ndarray:
    """A C-contiguous, writeable float64 (n, num_features) array (one kernel signature)."""
    if not (
        type(X) is np.ndarray
        and X.dtype == np.float64
        and X.ndim == 2
        and X.flags.c_contiguous
        and X.flags.writeable
    ):
        X = np.array(X, dtype=np.float64, order="C", ndmin=2, copy=True)
    if X.ndim != 2 or X.shape[1] != num_features:
        raise ValueError(f"expected rows of {num_features} features, got shape {X.shape}")
    return X
