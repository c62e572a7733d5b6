"""A compiled LightGBM forest for single-row scoring, bit-for-bit equal to `Booster.predict`.

Why: `lightgbm.Booster.predict` costs ~80 µs per single row (Python wrapper, C API
parameter parsing, row conversion, OpenMP set-up), a third of the scoring budget; and
LightGBM's OpenMP threads are a hazard inside web workers. A numba kernel walking flat
node arrays evaluates the same forest in a few µs, without OpenMP, and releases the GIL.

The forest is read from `Booster.dump_model()` (thresholds and leaf values are printed
with 17 significant digits there, so they round-trip exactly) and evaluated with
LightGBM's own rules (`include/LightGBM/tree.h`, `src/c_api.cpp`):

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

All trees in the dump are used. `Booster.dump_model()` and `Booster.predict()` both
default to the booster's ``best_iteration`` when it is set (a freshly trained booster
with early stopping), and to all trees for a booster loaded from a model string, so
`from_booster` matches `booster.predict(X)` in both cases.

Unsupported (refused with ValueError): multiclass / multi-output models, linear trees,
random-forest averaging (``average_output``). TreeSHAP contributions stay on LightGBM.
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
_MISSING_TYPES = {"None": MISSING_NONE, "Zero": MISSING_ZERO, "NaN": MISSING_NAN}

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
                fval = X[r, nodes[node, FEATURE]]
                if -K_ZERO_THRESHOLD <= fval <= K_ZERO_THRESHOLD:
                    fval = 0.0  # the C API drops near-zero entries of a dense row
                flags = nodes[node, FLAGS]
                if flags & CATEGORICAL:
                    left = _categorical_left(
                        fval, flags, nodes[node, CAT_START], nodes[node, CAT_WORDS], cat_bits
                    )
                else:
                    left = _numerical_left(fval, flags, thresholds[node])
                node = nodes[node, LEFT] if left else nodes[node, RIGHT]
            margin += leaf_values[-node - 1]
        if sigmoid > 0.0:
            out[r] = 1.0 / (1.0 + math.exp(-sigmoid * margin))
        else:
            out[r] = margin
    return out


# --------------------------------------------------------------------------- parsing


class _Builder:
    """Accumulates the flat arrays, one list per column, while walking the dumped trees.

    Plain lists of numbers only: a tuple per node would keep triggering the cyclic garbage
    collector, which then walks the whole (large) dump each time.
    """

    def __init__(self, nan_is_category_zero: bool) -> None:
        self.nan_is_category_zero = nan_is_category_zero
        self.columns: list[list[int]] = [[] for _ in range(6)]  # FEATURE ... CAT_WORDS
        self.thresholds: list[float] = []
        self.leaf_values: list[float] = []
        self.cat_bits: list[int] = []

    def add_tree(self, structure: dict[str, Any]) -> int:
        """Append one tree; return its root (>= 0 a node, < 0 the complement of a leaf)."""
        if "split_index" not in structure:
            return self._add_leaf(structure)
        root = len(self.thresholds)
        # Pre-order, left child right after its parent; children are patched when known.
        stack: list[tuple[dict[str, Any], int, int]] = [(structure, -1, LEFT)]
        while stack:
            item, parent, side = stack.pop()
            ref = self._add_split(item) if "split_index" in item else self._add_leaf(item)
            if parent >= 0:
                self.columns[side][parent] = ref
            if ref >= 0:
                stack.append((item["right_child"], ref, RIGHT))
                stack.append((item["left_child"], ref, LEFT))
        return root

    def _add_leaf(self, leaf: dict[str, Any]) -> int:
        if "leaf_coeff" in leaf or "leaf_const" in leaf:
            raise ValueError("unsupported LightGBM model: linear trees (linear_tree=true)")
        self.leaf_values.append(float(leaf["leaf_value"]))
        return -len(self.leaf_values)  # == ~(index of the new leaf)

    def _add_split(self, node: dict[str, Any]) -> int:
        missing = _MISSING_TYPES[node["missing_type"]]
        flags = (missing << MISSING_SHIFT) | (DEFAULT_LEFT if node["default_left"] else 0)
        start = words = 0
        threshold = 0.0
        if node["decision_type"] == "==":
            flags |= CATEGORICAL | (NAN_IS_CATEGORY_ZERO if self.nan_is_category_zero else 0)
            start, words = self._add_bitset(_categories(node["threshold"]))
        elif node["decision_type"] == "<=":
            threshold = float(node["threshold"])
        else:
            raise ValueError(f"unsupported LightGBM decision type {node['decision_type']!r}")
        for column, value in zip(
            self.columns, (int(node["split_feature"]), 0, 0, flags, start, words), strict=True
        ):
            column.append(value)
        self.thresholds.append(threshold)
        return len(self.thresholds) - 1

    def node_table(self) -> np.ndarray:
        """The int32 (n_nodes, 6) table: FEATURE, LEFT, RIGHT, FLAGS, CAT_START, CAT_WORDS."""
        return np.asarray(self.columns, dtype=np.int32).reshape(6, -1).T.copy()

    def _add_bitset(self, categories: list[int]) -> tuple[int, int]:
        words = (max(categories) // 32 + 1) if categories else 0
        bits = [0] * words
        for c in categories:
            bits[c // 32] |= 1 << (c % 32)
        start = len(self.cat_bits)
        self.cat_bits.extend(bits)
        return start, words


def _categories(threshold: Any) -> list[int]:
    """The dump writes a categorical split's left-going categories as "1||3||5"."""
    text = str(threshold).strip()
    cats = [int(part) for part in text.split("||")] if text else []
    if any(c < 0 for c in cats):
        raise ValueError(f"negative category in a categorical split: {text!r}")
    return cats


def _sigmoid_of(objective: str) -> float | None:
    """The probability transform's slope, or None when predictions are not probabilities."""
    name, *params = objective.split()
    if name == "binary":
        for param in params:
            key, _, value = param.partition(":")
            if key == "sigmoid":
                return float(value)
        raise ValueError(f"binary objective without a sigmoid parameter: {objective!r}")
    if name in ("cross_entropy", "xentropy"):
        return 1.0
    return None


def _check_supported(dump: dict[str, Any]) -> None:
    if int(dump.get("num_class", 1)) != 1 or int(dump.get("num_tree_per_iteration", 1)) != 1:
        raise ValueError(
            "unsupported LightGBM model: multiclass / multi-output "
            f"(num_class={dump.get('num_class')}, "
            f"num_tree_per_iteration={dump.get('num_tree_per_iteration')})"
        )
    if dump.get("average_output"):
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

    def __init__(self, dump: dict[str, Any], *, nan_is_category_zero: bool | None = None) -> None:
        _check_supported(dump)
        self.objective: str = str(dump.get("objective", ""))
        self.sigmoid: float | None = _sigmoid_of(self.objective) if self.objective else None
        self.feature_names: list[str] = list(dump.get("feature_names", []))
        self.num_features: int = int(dump["max_feature_idx"]) + 1
        if nan_is_category_zero is None:
            nan_is_category_zero = _nan_is_category_zero()
        builder = _Builder(nan_is_category_zero)
        roots = [builder.add_tree(tree["tree_structure"]) for tree in dump["tree_info"]]
        self.num_trees: int = len(roots)
        self._roots = _readonly(np.asarray(roots, dtype=np.int32))
        self._nodes = _readonly(builder.node_table())
        self._thresholds = _readonly(np.asarray(builder.thresholds, dtype=np.float64))
        self._leaf_values = _readonly(np.asarray(builder.leaf_values, dtype=np.float64))
        self._cat_bits = _readonly(np.asarray(builder.cat_bits, dtype=np.uint32))
        if self._nodes.size and int(self._nodes[:, FEATURE].max()) >= self.num_features:
            raise ValueError("a split uses a feature index beyond max_feature_idx")
        self._warm()

    @classmethod
    def from_booster(cls, booster: Any) -> CompiledForest:
        """Compile the trees `booster.predict(X)` uses (all of them, or best_iteration's)."""
        return cls(booster.dump_model())

    @classmethod
    def from_model_string(cls, model_str: str) -> CompiledForest:
        """Compile a saved LightGBM text model (all trees in it)."""
        import lightgbm as lgb

        return cls.from_booster(lgb.Booster(model_str=model_str))

    def predict_raw(self, X: np.ndarray) -> np.ndarray:
        """The raw margin (sum of leaf values) per row: float64, shape (n,)."""
        return self._run(X, 0.0)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(label = 1) per row, as `booster.predict(X)` for a binary objective."""
        if self.sigmoid is None:
            raise ValueError(f"predict_proba needs a binary objective, not {self.objective!r}")
        return self._run(X, self.sigmoid)

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
        self.predict_raw(np.zeros((1, self.num_features), dtype=np.float64))

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
