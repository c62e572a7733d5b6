/* RollingSums in C: the same object as `aggregates.PyRollingSums`, ~8x less CPU a call; and
 * RecentMembers's count and update on its dict (`members_count`, `members_update`).
 *
 * Why: the 25 rolling aggregates an event reads and updates were about half of the feature
 * engine's time on the request path (bench_features.py), nearly all of it interpreter
 * overhead on lists of boxed ints. Here a bucket is a row of int64 (bucket, v0, v1, ...) in
 * one array, and the channel totals are int64.
 *
 * Semantics are exactly PyRollingSums's (see its docstring; tests/test_features_aggregates.py
 * runs every test on both and compares them on random streams with late events). Sums that
 * would overflow int64 raise OverflowError (amounts are capped far below by validation).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define INITIAL_CUTOFF (-((int64_t)1 << 62))

typedef struct {
    PyObject_HEAD
    int64_t bucket_ms;
    int64_t n;          /* buckets in the window */
    int64_t cutoff;     /* buckets <= cutoff have expired */
    Py_ssize_t k;       /* channels */
    int64_t *totals;    /* k */
    int64_t *rows;      /* cap rows of (k + 1): bucket, then the k channel values */
    Py_ssize_t start;   /* first row in use */
    Py_ssize_t len;     /* rows in use */
    Py_ssize_t cap;     /* rows allocated */
} RollingSums;

static int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) q -= 1;
    return q;
}

static inline int64_t *row_at(RollingSums *self, Py_ssize_t i) {
    return self->rows + (self->start + i) * (self->k + 1);
}

static void expire(RollingSums *self, int64_t cutoff) {
    Py_ssize_t k = self->k;
    while (self->len > 0) {
        int64_t *row = row_at(self, 0);
        if (row[0] > cutoff) break;
        for (Py_ssize_t c = 0; c < k; c++) self->totals[c] -= row[c + 1];
        self->start++;
        self->len--;
    }
    if (self->len == 0) self->start = 0;
}

/* Room for one more row at the end: the rows move to the front, or the array grows. */
static int reserve_one(RollingSums *self) {
    Py_ssize_t width = self->k + 1;
    if (self->start + self->len < self->cap) return 0;
    if (self->start > 0) {
        memmove(self->rows, row_at(self, 0), (size_t)(self->len * width) * sizeof(int64_t));
        self->start = 0;
        if (self->len < self->cap) return 0;
    }
    Py_ssize_t cap = self->cap ? self->cap * 2 : 4;
    int64_t *rows = PyMem_Realloc(self->rows, (size_t)(cap * width) * sizeof(int64_t));
    if (rows == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->rows = rows;
    self->cap = cap;
    return 0;
}

static int add_checked(int64_t *into, int64_t v) {
    if (__builtin_add_overflow(*into, v, into)) {
        PyErr_SetString(PyExc_OverflowError, "a rolling sum overflowed int64");
        return -1;
    }
    return 0;
}

static PyObject *totals_list(RollingSums *self) {
    PyObject *out = PyList_New(self->k);
    if (out == NULL) return NULL;
    for (Py_ssize_t c = 0; c < self->k; c++) {
        PyObject *v = PyLong_FromLongLong(self->totals[c]);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, c, v);
    }
    return out;
}

static int window_sizes(PyObject *window, int64_t *bucket_ms, int64_t *n) {
    PyObject *b = PyObject_GetAttrString(window, "bucket_ms");
    if (b == NULL) return -1;
    *bucket_ms = PyLong_AsLongLong(b);
    Py_DECREF(b);
    if (*bucket_ms == -1 && PyErr_Occurred()) return -1;
    PyObject *nb = PyObject_GetAttrString(window, "n_buckets");
    if (nb == NULL) return -1;
    *n = PyLong_AsLongLong(nb);
    Py_DECREF(nb);
    if (*n == -1 && PyErr_Occurred()) return -1;
    if (*bucket_ms <= 0 || *n <= 0) {
        PyErr_SetString(PyExc_ValueError, "a window needs bucket_ms > 0 and n_buckets > 0");
        return -1;
    }
    return 0;
}

static int setup(RollingSums *self, int64_t bucket_ms, int64_t n, Py_ssize_t k) {
    if (k < 0) {
        PyErr_SetString(PyExc_ValueError, "n_channels must be >= 0");
        return -1;
    }
    PyMem_Free(self->totals);
    PyMem_Free(self->rows);
    self->rows = NULL;
    self->start = self->len = self->cap = 0;
    self->totals = PyMem_Calloc((size_t)(k ? k : 1), sizeof(int64_t));
    if (self->totals == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->bucket_ms = bucket_ms;
    self->n = n;
    self->k = k;
    self->cutoff = INITIAL_CUTOFF;
    return 0;
}

static int RollingSums_init(RollingSums *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"window", "n_channels", NULL};
    PyObject *window;
    Py_ssize_t k;
    int64_t bucket_ms, n;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "On", kwlist, &window, &k)) return -1;
    if (window_sizes(window, &bucket_ms, &n) < 0) return -1;
    return setup(self, bucket_ms, n, k);
}

static void RollingSums_dealloc(RollingSums *self) {
    PyMem_Free(self->totals);
    PyMem_Free(self->rows);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The window as seen at t: buckets that left it expire. */
static void advance(RollingSums *self, int64_t t) {
    int64_t cutoff = floor_div(t, self->bucket_ms) - self->n;
    if (cutoff > self->cutoff) {
        self->cutoff = cutoff;
        if (self->len > 0 && row_at(self, 0)[0] <= cutoff) expire(self, cutoff);
    }
}

static PyObject *RollingSums_get(RollingSums *self, PyObject *arg) {
    int64_t t = PyLong_AsLongLong(arg);
    if (t == -1 && PyErr_Occurred()) return NULL;
    advance(self, t);
    return totals_list(self);
}

/* values as int64[k] from any sequence of ints (exactly k of them) */
static int read_values(RollingSums *self, PyObject *values, int64_t *out) {
    PyObject *seq = PySequence_Fast(values, "values must be a sequence of ints");
    if (seq == NULL) return -1;
    Py_ssize_t m = PySequence_Fast_GET_SIZE(seq);
    if (m != self->k) {
        PyErr_Format(PyExc_ValueError, "expected %zd channel values, got %zd", self->k, m);
        Py_DECREF(seq);
        return -1;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t c = 0; c < m; c++) {
        out[c] = PyLong_AsLongLong(items[c]);
        if (out[c] == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

static int add_row(int64_t *row, const int64_t *values, Py_ssize_t k) {
    for (Py_ssize_t c = 0; c < k; c++)
        if (add_checked(&row[c + 1], values[c]) < 0) return -1;
    return 0;
}

/* Add one event's k channel values at t (0, or -1 with an exception set). */
static int update_values(RollingSums *self, int64_t t, const int64_t *values) {
    Py_ssize_t k = self->k;
    int64_t b = floor_div(t, self->bucket_ms);
    int64_t cutoff = b - self->n;
    if (cutoff > self->cutoff) {
        self->cutoff = cutoff;
        if (self->len > 0 && row_at(self, 0)[0] <= cutoff) expire(self, cutoff);
    } else if (b <= self->cutoff) {
        return 0; /* a late event already outside the window */
    }
    /* check every sum before changing any, so an overflow leaves the state as it was */
    for (Py_ssize_t c = 0; c < k; c++) {
        int64_t probe;
        if (__builtin_add_overflow(self->totals[c], values[c], &probe)) {
            PyErr_SetString(PyExc_OverflowError, "a rolling sum overflowed int64");
            return -1;
        }
    }
    for (Py_ssize_t c = 0; c < k; c++) self->totals[c] += values[c];
    Py_ssize_t width = k + 1;
    if (self->len > 0 && row_at(self, self->len - 1)[0] == b) {
        return add_row(row_at(self, self->len - 1), values, k);
    }
    if (self->len == 0 || row_at(self, self->len - 1)[0] < b) {
        if (reserve_one(self) < 0) return -1;
        int64_t *row = row_at(self, self->len);
        row[0] = b;
        memcpy(row + 1, values, (size_t)k * sizeof(int64_t));
        self->len++;
        return 0;
    }
    /* a late event inside the window: find or insert its bucket */
    Py_ssize_t lo = 0, hi = self->len;
    while (lo < hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (row_at(self, mid)[0] < b) lo = mid + 1;
        else hi = mid;
    }
    if (row_at(self, lo)[0] == b) return add_row(row_at(self, lo), values, k);
    if (reserve_one(self) < 0) return -1;
    int64_t *at = row_at(self, lo);
    memmove(at + width, at, (size_t)((self->len - lo) * width) * sizeof(int64_t));
    at[0] = b;
    memcpy(at + 1, values, (size_t)k * sizeof(int64_t));
    self->len++;
    return 0;
}

static PyObject *RollingSums_update(RollingSums *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "update(t_ms, values) takes 2 arguments");
        return NULL;
    }
    int64_t t = PyLong_AsLongLong(args[0]);
    if (t == -1 && PyErr_Occurred()) return NULL;
    int64_t stack_values[16];
    int64_t *values = stack_values;
    if (self->k > 16) {
        values = PyMem_Malloc((size_t)self->k * sizeof(int64_t));
        if (values == NULL) return PyErr_NoMemory();
    }
    int rc = read_values(self, args[1], values);
    if (rc == 0) rc = update_values(self, t, values);
    if (values != stack_values) PyMem_Free(values);
    return rc < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *buckets_list(RollingSums *self) {
    PyObject *out = PyList_New(self->len);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < self->len; i++) {
        int64_t *row = row_at(self, i);
        PyObject *r = PyList_New(self->k + 1);
        if (r == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        for (Py_ssize_t c = 0; c <= self->k; c++) {
            PyObject *v = PyLong_FromLongLong(row[c]);
            if (v == NULL) {
                Py_DECREF(r);
                Py_DECREF(out);
                return NULL;
            }
            PyList_SET_ITEM(r, c, v);
        }
        PyList_SET_ITEM(out, i, r);
    }
    return out;
}

static PyObject *RollingSums_get_buckets(RollingSums *self, void *closure) {
    return buckets_list(self);
}

/* Replace the buckets: a list of [bucket, v0, ..., v(k-1)] in strictly increasing order. */
static int RollingSums_set_buckets(RollingSums *self, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "buckets cannot be deleted");
        return -1;
    }
    PyObject *seq = PySequence_Fast(value, "buckets must be a list of [bucket, values...]");
    if (seq == NULL) return -1;
    Py_ssize_t m = PySequence_Fast_GET_SIZE(seq), width = self->k + 1;
    int64_t *rows = PyMem_Malloc((size_t)((m ? m : 1) * width) * sizeof(int64_t));
    if (rows == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        PyObject *r = PySequence_Fast(PySequence_Fast_GET_ITEM(seq, i), "a bucket must be a list");
        if (r == NULL) goto fail;
        if (PySequence_Fast_GET_SIZE(r) != width) {
            PyErr_Format(PyExc_ValueError, "a bucket must hold %zd ints", width);
            Py_DECREF(r);
            goto fail;
        }
        for (Py_ssize_t c = 0; c < width; c++) {
            int64_t v = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(r, c));
            if (v == -1 && PyErr_Occurred()) {
                Py_DECREF(r);
                goto fail;
            }
            rows[i * width + c] = v;
        }
        Py_DECREF(r);
        if (i > 0 && rows[i * width] <= rows[(i - 1) * width]) {
            PyErr_SetString(PyExc_ValueError, "buckets must be in increasing order");
            goto fail;
        }
    }
    Py_DECREF(seq);
    PyMem_Free(self->rows);
    self->rows = rows;
    self->start = 0;
    self->len = m;
    self->cap = m ? m : 1;
    return 0;
fail:
    Py_DECREF(seq);
    PyMem_Free(rows);
    return -1;
}

static PyObject *RollingSums_get_totals(RollingSums *self, void *closure) {
    return totals_list(self);
}

static int RollingSums_set_totals(RollingSums *self, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "totals cannot be deleted");
        return -1;
    }
    int64_t stack_values[16];
    int64_t *values = self->k > 16 ? PyMem_Malloc((size_t)self->k * sizeof(int64_t)) : stack_values;
    if (values == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = read_values(self, value, values);
    if (rc == 0) memcpy(self->totals, values, (size_t)self->k * sizeof(int64_t));
    if (values != stack_values) PyMem_Free(values);
    return rc;
}

static PyObject *RollingSums_get_cutoff(RollingSums *self, void *closure) {
    return PyLong_FromLongLong(self->cutoff);
}

static int RollingSums_set_cutoff(RollingSums *self, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cutoff cannot be deleted");
        return -1;
    }
    int64_t v = PyLong_AsLongLong(value);
    if (v == -1 && PyErr_Occurred()) return -1;
    self->cutoff = v;
    return 0;
}

static PyObject *RollingSums_get_bucket_ms(RollingSums *self, void *closure) {
    return PyLong_FromLongLong(self->bucket_ms);
}

static PyObject *RollingSums_get_n(RollingSums *self, void *closure) {
    return PyLong_FromLongLong(self->n);
}

static PyObject *RollingSums_get_last_bucket(RollingSums *self, void *closure) {
    if (self->len == 0) Py_RETURN_NONE;
    return PyLong_FromLongLong(row_at(self, self->len - 1)[0]);
}

static PyObject *restore_function = NULL; /* the module's _restore, for pickling */

static PyObject *RollingSums_reduce(RollingSums *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *totals = totals_list(self);
    PyObject *buckets = buckets_list(self);
    if (totals == NULL || buckets == NULL) {
        Py_XDECREF(totals);
        Py_XDECREF(buckets);
        return NULL;
    }
    return Py_BuildValue("O(LLLNN)", restore_function, (long long)self->bucket_ms,
                         (long long)self->n, (long long)self->cutoff, totals, buckets);
}

static PyObject *RollingSums_sizeof(RollingSums *self, PyObject *Py_UNUSED(ignored)) {
    size_t size = sizeof(RollingSums) + (size_t)(self->k ? self->k : 1) * sizeof(int64_t);
    size += (size_t)(self->cap * (self->k + 1)) * sizeof(int64_t);
    return PyLong_FromSize_t(size);
}

static PyMethodDef RollingSums_methods[] = {
    {"get", (PyCFunction)RollingSums_get, METH_O,
     "Channel totals as seen at t_ms (a new list)."},
    {"update", (PyCFunction)(void (*)(void))RollingSums_update, METH_FASTCALL,
     "Add one event's channel values at t_ms."},
    {"__reduce__", (PyCFunction)RollingSums_reduce, METH_NOARGS, NULL},
    {"__sizeof__", (PyCFunction)RollingSums_sizeof, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef RollingSums_getset[] = {
    {"buckets", (getter)RollingSums_get_buckets, (setter)RollingSums_set_buckets,
     "[[bucket, v0, ...], ...] in bucket order (a copy)", NULL},
    {"totals", (getter)RollingSums_get_totals, (setter)RollingSums_set_totals,
     "channel totals over the live buckets (a copy)", NULL},
    {"cutoff", (getter)RollingSums_get_cutoff, (setter)RollingSums_set_cutoff,
     "buckets <= cutoff have expired", NULL},
    {"bucket_ms", (getter)RollingSums_get_bucket_ms, NULL, "bucket width", NULL},
    {"n", (getter)RollingSums_get_n, NULL, "buckets in the window", NULL},
    {"last_bucket", (getter)RollingSums_get_last_bucket, NULL,
     "the newest bucket held, or None", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject RollingSumsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "risk_service.features._rolling.RollingSums",
    .tp_doc = PyDoc_STR("Integer running sums of several channels over a bucketed window "
                        "(compiled; see aggregates.PyRollingSums)."),
    .tp_basicsize = sizeof(RollingSums),
    .tp_itemsize = 0,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RollingSums_init,
    .tp_dealloc = (destructor)RollingSums_dealloc,
    .tp_methods = RollingSums_methods,
    .tp_getset = RollingSums_getset,
};

static PyObject *restore(PyObject *module, PyObject *args) {
    long long bucket_ms, n, cutoff;
    PyObject *totals, *buckets;
    if (!PyArg_ParseTuple(args, "LLLOO", &bucket_ms, &n, &cutoff, &totals, &buckets)) return NULL;
    if (bucket_ms <= 0 || n <= 0) {
        PyErr_SetString(PyExc_ValueError, "a window needs bucket_ms > 0 and n_buckets > 0");
        return NULL;
    }
    Py_ssize_t k = PySequence_Size(totals);
    if (k < 0) return NULL;
    RollingSums *self = (RollingSums *)PyType_GenericNew(&RollingSumsType, NULL, NULL);
    if (self == NULL) return NULL;
    if (setup(self, bucket_ms, n, k) < 0 || RollingSums_set_totals(self, totals, NULL) < 0 ||
        RollingSums_set_buckets(self, buckets, NULL) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->cutoff = cutoff;
    return (PyObject *)self;
}

static RollingSums *item_sums(PyObject *aggs, Py_ssize_t i) {
    if (i < 0 || i >= PyList_GET_SIZE(aggs)) {
        PyErr_Format(PyExc_IndexError, "no rolling sums at index %zd", i);
        return NULL;
    }
    PyObject *agg = PyList_GET_ITEM(aggs, i);
    if (!PyObject_TypeCheck(agg, &RollingSumsType)) {
        PyErr_SetString(PyExc_TypeError, "expected compiled RollingSums");
        return NULL;
    }
    return (RollingSums *)agg;
}

/* read_into(aggs, t_ms, reads, v): for (i, outs) in reads, the totals of aggs[i] as seen at
 * t_ms, and for (channel, feature, is_amount) in outs, v[feature] = total / 100 (an amount in
 * minor units) or float(total). What `aggregates.py_read_into` does, in one call. */
static PyObject *read_into(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[0]) || !PyDict_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "read_into(aggs: list, t_ms: int, reads, v: dict)");
        return NULL;
    }
    PyObject *aggs = args[0], *v = args[3];
    int64_t t = PyLong_AsLongLong(args[1]);
    if (t == -1 && PyErr_Occurred()) return NULL;
    PyObject *reads = PySequence_Fast(args[2], "reads must be a sequence");
    if (reads == NULL) return NULL;
    Py_ssize_t n_reads = PySequence_Fast_GET_SIZE(reads);
    for (Py_ssize_t r = 0; r < n_reads; r++) {
        PyObject *read = PySequence_Fast_GET_ITEM(reads, r);
        if (!PyTuple_Check(read) || PyTuple_GET_SIZE(read) != 2) {
            PyErr_SetString(PyExc_TypeError, "a read is a tuple (index, outputs)");
            goto fail;
        }
        Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(read, 0));
        if (i == -1 && PyErr_Occurred()) goto fail;
        RollingSums *agg = item_sums(aggs, i);
        if (agg == NULL) goto fail;
        advance(agg, t);
        PyObject *outs = PyTuple_GET_ITEM(read, 1);
        if (!PyTuple_Check(outs)) {
            PyErr_SetString(PyExc_TypeError, "a read's outputs are a tuple");
            goto fail;
        }
        for (Py_ssize_t o = 0; o < PyTuple_GET_SIZE(outs); o++) {
            PyObject *out = PyTuple_GET_ITEM(outs, o);
            if (!PyTuple_Check(out) || PyTuple_GET_SIZE(out) != 3) {
                PyErr_SetString(PyExc_TypeError, "an output is (channel, feature, is_amount)");
                goto fail;
            }
            Py_ssize_t ch = PyLong_AsSsize_t(PyTuple_GET_ITEM(out, 0));
            if (ch == -1 && PyErr_Occurred()) goto fail;
            if (ch < 0 || ch >= agg->k) {
                PyErr_Format(PyExc_IndexError, "no channel %zd", ch);
                goto fail;
            }
            int is_amount = PyObject_IsTrue(PyTuple_GET_ITEM(out, 2));
            if (is_amount < 0) goto fail;
            double x = (double)agg->totals[ch];
            PyObject *value = PyFloat_FromDouble(is_amount ? x / 100.0 : x);
            if (value == NULL) goto fail;
            int rc = PyDict_SetItem(v, PyTuple_GET_ITEM(out, 1), value);
            Py_DECREF(value);
            if (rc < 0) goto fail;
        }
    }
    Py_DECREF(reads);
    Py_RETURN_NONE;
fail:
    Py_DECREF(reads);
    return NULL;
}

#define MAX_EVENT_VALUES 64

/* update_from(aggs, t_ms, values, picks): for each aggs[j], its channel values are
 * values[picks[j][c]]; when any is non-zero, aggs[j].update(t_ms, those). What
 * `aggregates.py_update_from` does, in one call. */
static PyObject *update_from(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[0]) || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "update_from(aggs: list, t_ms: int, values: list, picks)");
        return NULL;
    }
    PyObject *aggs = args[0], *values = args[2];
    int64_t t = PyLong_AsLongLong(args[1]);
    if (t == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t n_values = PyList_GET_SIZE(values);
    if (n_values > MAX_EVENT_VALUES) {
        PyErr_SetString(PyExc_ValueError, "too many event values");
        return NULL;
    }
    int64_t event[MAX_EVENT_VALUES];
    for (Py_ssize_t i = 0; i < n_values; i++) {
        event[i] = PyLong_AsLongLong(PyList_GET_ITEM(values, i));
        if (event[i] == -1 && PyErr_Occurred()) return NULL;
    }
    PyObject *picks = PySequence_Fast(args[3], "picks must be a sequence");
    if (picks == NULL) return NULL;
    if (PySequence_Fast_GET_SIZE(picks) != PyList_GET_SIZE(aggs)) {
        PyErr_SetString(PyExc_ValueError, "one pick per rolling sums");
        goto fail;
    }
    for (Py_ssize_t j = 0; j < PyList_GET_SIZE(aggs); j++) {
        RollingSums *agg = item_sums(aggs, j);
        if (agg == NULL) goto fail;
        PyObject *pick = PySequence_Fast_GET_ITEM(picks, j);
        if (!PyTuple_Check(pick) || PyTuple_GET_SIZE(pick) != agg->k || agg->k > 16) {
            PyErr_Format(PyExc_ValueError, "a pick must be a tuple of %zd indexes", agg->k);
            goto fail;
        }
        int64_t vals[16];
        int any = 0;
        for (Py_ssize_t c = 0; c < agg->k; c++) {
            Py_ssize_t at = PyLong_AsSsize_t(PyTuple_GET_ITEM(pick, c));
            if (at == -1 && PyErr_Occurred()) goto fail;
            if (at < 0 || at >= n_values) {
                PyErr_Format(PyExc_IndexError, "no event value %zd", at);
                goto fail;
            }
            vals[c] = event[at];
            any |= vals[c] != 0;
        }
        if (any && update_values(agg, t, vals) < 0) goto fail;
    }
    Py_DECREF(picks);
    Py_RETURN_NONE;
fail:
    Py_DECREF(picks);
    return NULL;
}

/* -- RecentMembers (aggregates.py) on its dict: member -> last-seen ms, in time order -------- */

static PyObject *str_values = NULL;

/* An iterator over the dict's values, newest first (reversed(d.values())). */
static PyObject *newest_first(PyObject *d) {
    PyObject *view = PyObject_CallMethodNoArgs(d, str_values);
    if (view == NULL) return NULL;
    PyObject *it = PyObject_CallOneArg((PyObject *)&PyReversed_Type, view);
    Py_DECREF(view);
    return it;
}

static int next_ms(PyObject *it, int64_t *out) {
    PyObject *v = PyIter_Next(it);
    if (v == NULL) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_RuntimeError, "distinct set changed");
        return -1;
    }
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* The arguments of a member function: a dict first, then int64s from args[from] on, the
 * second of them a bucket width (positive). */
static int member_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want,
                       Py_ssize_t from, int64_t *out, const char *usage) {
    if (nargs != want || !PyDict_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    for (Py_ssize_t i = from; i < want; i++) {
        out[i - from] = PyLong_AsLongLong(args[i]);
        if (out[i - from] == -1 && PyErr_Occurred()) return -1;
    }
    if (out[1] <= 0) {
        PyErr_Format(PyExc_ValueError, "%s: the bucket width must be positive", usage);
        return -1;
    }
    return 0;
}

/* members_count(last, t_ms, bucket_ms, n_buckets): RecentMembers.count, the same two-ended
 * scan (the members outside the window are a prefix of the time order). */
static PyObject *members_count(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[3];
    if (member_args(args, nargs, 4, 1, a, "members_count(last: dict, t_ms, bucket_ms, n_buckets)"))
        return NULL;
    PyObject *last = args[0];
    int64_t b = a[1], cutoff = floor_div(a[0], b) - a[2];
    Py_ssize_t n = PyDict_GET_SIZE(last), inside = 0, outside = 0, pos = 0;
    if (n == 0) return PyLong_FromLong(0);
    PyObject *newest = newest_first(last);
    if (newest == NULL) return NULL;
    Py_ssize_t result = -1;
    while (inside + outside < n) {
        int64_t ms;
        if (next_ms(newest, &ms) < 0) goto fail;
        if (floor_div(ms, b) <= cutoff) {
            result = inside;
            break;
        }
        inside++;
        if (inside + outside == n) break;
        PyObject *key, *value;
        if (!PyDict_Next(last, &pos, &key, &value)) {
            PyErr_SetString(PyExc_RuntimeError, "distinct set changed");
            goto fail;
        }
        ms = PyLong_AsLongLong(value);
        if (ms == -1 && PyErr_Occurred()) goto fail;
        if (floor_div(ms, b) > cutoff) {
            result = n - outside;
            break;
        }
        outside++;
    }
    Py_DECREF(newest);
    return PyLong_FromSsize_t(result < 0 ? inside : result);
fail:
    Py_DECREF(newest);
    return NULL;
}

/* The first `count` keys in insertion order, removed. */
static int drop_oldest(PyObject *last, Py_ssize_t count) {
    PyObject *keys[64];
    while (count > 0) {
        Py_ssize_t pos = 0, got = 0, take = count < 64 ? count : 64;
        PyObject *key, *value;
        while (got < take && PyDict_Next(last, &pos, &key, &value)) {
            Py_INCREF(key);
            keys[got++] = key;
        }
        int failed = 0;
        for (Py_ssize_t i = 0; i < got; i++) {
            if (!failed && PyDict_DelItem(last, keys[i]) < 0) failed = 1;
            Py_DECREF(keys[i]);
        }
        if (failed) return -1;
        if (got < take) return 0;
        count -= got;
    }
    return 0;
}

/* members_update(last, member, t_ms, h_bucket, h_n, cap) -> bool: RecentMembers.update when
 * the sighting is not older than the newest one (False, nothing changed: the caller places a
 * late sighting itself). The member moves to the end, the least recently seen beyond `cap`
 * and those whose bucket left the horizon are forgotten. */
static PyObject *members_update(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    int64_t a[4];
    if (member_args(args, nargs, 6, 2, a,
                    "members_update(last: dict, member, t_ms, h_bucket, h_n, cap)"))
        return NULL;
    PyObject *last = args[0], *member = args[1];
    int64_t t = a[0], hb = a[1], hn = a[2], cap = a[3];
    PyObject *seen = PyDict_GetItemWithError(last, member); /* borrowed */
    if (seen == NULL && PyErr_Occurred()) return NULL;
    if (seen != NULL) {
        int64_t s = PyLong_AsLongLong(seen);
        if (s == -1 && PyErr_Occurred()) return NULL;
        if (t < s) Py_RETURN_TRUE; /* a late sighting of a member seen since: nothing changes */
    }
    if (PyDict_GET_SIZE(last) > 0) {
        /* the newest is the member itself only when t >= it, so this needs no delete first */
        PyObject *newest = newest_first(last);
        if (newest == NULL) return NULL;
        int64_t ms;
        int failed = next_ms(newest, &ms);
        Py_DECREF(newest);
        if (failed < 0) return NULL;
        if (t < ms) Py_RETURN_FALSE;
    }
    if (seen != NULL && PyDict_DelItem(last, member) < 0) return NULL;
    PyObject *value = PyLong_FromLongLong(t);
    if (value == NULL) return NULL;
    int failed = PyDict_SetItem(last, member, value);
    Py_DECREF(value);
    if (failed < 0) return NULL;
    if (PyDict_GET_SIZE(last) > cap && drop_oldest(last, 1) < 0) /* one, as in Python */
        return NULL;
    int64_t cutoff = floor_div(t, hb) - hn;
    Py_ssize_t pos = 0, expired = 0;
    PyObject *key, *v;
    while (PyDict_Next(last, &pos, &key, &v)) {
        int64_t ms = PyLong_AsLongLong(v);
        if (ms == -1 && PyErr_Occurred()) return NULL;
        if (floor_div(ms, hb) > cutoff) break;
        expired++;
    }
    if (expired > 0 && drop_oldest(last, expired) < 0) return NULL;
    Py_RETURN_TRUE;
}

static PyMethodDef module_methods[] = {
    {"_restore", restore, METH_VARARGS, "A RollingSums from its pickled fields."},
    {"read_into", (PyCFunction)(void (*)(void))read_into, METH_FASTCALL,
     "read_into(aggs, t_ms, reads, v): the features of several rolling sums into a dict."},
    {"update_from", (PyCFunction)(void (*)(void))update_from, METH_FASTCALL,
     "update_from(aggs, t_ms, values, picks): one event into several rolling sums."},
    {"members_count", (PyCFunction)(void (*)(void))members_count, METH_FASTCALL,
     "members_count(last, t_ms, bucket_ms, n_buckets): RecentMembers.count on its dict."},
    {"members_update", (PyCFunction)(void (*)(void))members_update, METH_FASTCALL,
     "members_update(last, member, t_ms, h_bucket, h_n, cap) -> False for a late sighting."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef rolling_module = {
    PyModuleDef_HEAD_INIT, "risk_service.features._rolling", "Compiled rolling sums (see aggregates.py).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__rolling(void) {
    if (PyType_Ready(&RollingSumsType) < 0) return NULL;
    str_values = PyUnicode_InternFromString("values");
    if (str_values == NULL) return NULL;
    PyObject *m = PyModule_Create(&rolling_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "RollingSums", (PyObject *)&RollingSumsType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    restore_function = PyObject_GetAttrString(m, "_restore");
    if (restore_function == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
