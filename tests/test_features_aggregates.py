"""Each online aggregate and offline kernel against a brute-force computation, at every step."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
from test_features_world import make_world

from risk_service.features import aggregates, compute_offline_features
from risk_service.features.aggregates import LabelTimes, PyRollingSums, RecentMembers, RollingSums
from risk_service.features.derived import times_ms
from risk_service.features.kernels import distinct_members, previous_in_group
from risk_service.features.spec import DAY_MS, HOUR_MS, MINUTE_MS, W1H, W7D, W10M, W24H, Window


def _in_window(t_e: int, t: int, w: Window) -> bool:
    return t_e // w.bucket_ms > t // w.bucket_ms - w.n_buckets


def _stream(rng: np.random.Generator, n: int, step_ms: int) -> np.ndarray:
    """Non-decreasing times with ties and hits exactly on bucket edges."""
    gaps = rng.choice([0, 0, 1, step_ms - 1, step_ms, step_ms + 1, 7 * step_ms], n)
    return np.cumsum(gaps).astype(np.int64) + 1_700_000_000_000 // step_ms * step_ms


# every RollingSums test runs on the compiled class and on the Python one it must equal
BOTH = pytest.mark.parametrize("sums", [RollingSums, PyRollingSums], ids=["compiled", "python"])


@pytest.fixture(params=["compiled", "python"])
def members_impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """RecentMembers on the compiled dict functions (`_rolling.c`), then on the Python ones."""
    if request.param == "python":
        monkeypatch.setattr(aggregates, "members_count", aggregates.py_members_count)
        monkeypatch.setattr(aggregates, "members_update", aggregates.py_members_update)
    return str(request.param)


@BOTH
@pytest.mark.parametrize("window", [W10M, W1H, W7D, Window("3d", DAY_MS, 3)])
def test_rolling_sums_vs_brute_force(window: Window, sums: type[PyRollingSums]) -> None:
    rng = np.random.default_rng(1)
    times = _stream(rng, 1500, window.bucket_ms)
    values = rng.integers(0, 1000, len(times))
    agg = sums(window, 2)
    for i, t in enumerate(times):
        got = list(agg.get(int(t)))
        seen = [j for j in range(i) if _in_window(int(times[j]), int(t), window)]
        assert got == [len(seen), int(values[seen].sum())], i
        agg.update(int(t), [1, int(values[i])])
    assert len(agg.buckets) <= window.n_buckets


@BOTH
def test_rolling_sums_bucket_edges(sums: type[PyRollingSums]) -> None:
    agg = sums(W10M, 1)
    agg.update(0, [1])  # bucket 0
    agg.update(MINUTE_MS - 1, [1])  # still bucket 0
    assert agg.get(10 * MINUTE_MS - 1) == [2]  # bucket 9: 0 > 9 - 10
    assert agg.get(10 * MINUTE_MS) == [0]  # bucket 10: 0 > 0 is false -> expired


@BOTH
def test_rolling_sums_late_event_inside_window(sums: type[PyRollingSums]) -> None:
    agg = sums(W1H, 1)
    agg.update(10 * MINUTE_MS, [1])
    agg.update(5 * MINUTE_MS, [1])  # late but inside the window: kept in its own bucket
    assert agg.get(64 * MINUTE_MS) == [2]
    assert agg.get(65 * MINUTE_MS) == [1]  # bucket 5 expired first
    agg.update(0, [1])  # already outside the window: ignored
    assert agg.get(65 * MINUTE_MS) == [1]


def test_the_compiled_rolling_sums_are_in_use() -> None:
    """`pip install` builds `_rolling.c`; a silent fall-back to Python would cost the request
    path about half of its feature engine's time."""
    from risk_service.features._rolling import RollingSums as Compiled

    assert aggregates.RollingSums is Compiled is not PyRollingSums


def _fields(agg: PyRollingSums) -> tuple[object, ...]:
    return agg.cutoff, list(agg.totals), [list(b) for b in agg.buckets], agg.last_bucket


@pytest.mark.parametrize("seed", range(6))
def test_compiled_rolling_sums_equal_python_with_late_events(seed: int) -> None:
    """Random streams with late events (inside and outside the window), reads at random
    times, idle gaps that expire everything, and every field after every step."""
    rng = np.random.default_rng(seed)
    window = [W10M, W1H, W7D, Window("3d", DAY_MS, 3)][seed % 4]
    k = 1 + seed % 3
    fast, slow = RollingSums(window, k), PyRollingSums(window, k)
    t = 1_700_000_000_000
    for _ in range(2500):
        t += int(rng.choice([0, 1, window.bucket_ms, 3 * window.bucket_ms, 400 * window.bucket_ms],
                            p=[0.2, 0.3, 0.3, 0.15, 0.05]))  # fmt: skip
        late = int(rng.integers(0, (window.n_buckets + 3) * window.bucket_ms))
        at = t - late if rng.random() < 0.3 else t
        if rng.random() < 0.5:
            vals = [int(v) for v in rng.integers(0, 10**9, k)]
            fast.update(at, vals)
            slow.update(at, vals)
        else:
            assert fast.get(at) == slow.get(at)
        assert _fields(fast) == _fields(slow)


def test_compiled_rolling_sums_survive_pickle_and_field_copy() -> None:
    """Snapshots pickle states; the Redis codec copies cutoff, totals and buckets."""
    agg = RollingSums(W1H, 2)
    for i, minute in enumerate([3, 3, 7, 50, 52]):
        agg.update(minute * MINUTE_MS, [1, 100 * i])
    copied = pickle.loads(pickle.dumps(agg))
    assert type(copied) is RollingSums and _fields(copied) == _fields(agg)
    blank = RollingSums(W1H, 2)
    blank.cutoff, blank.totals, blank.buckets = agg.cutoff, agg.totals, agg.buckets
    assert _fields(blank) == _fields(agg)
    for agg_ in (agg, copied, blank):  # and they go on alike
        agg_.update(64 * MINUTE_MS, [1, 5])
    assert _fields(agg) == _fields(copied) == _fields(blank)
    assert agg.get(64 * MINUTE_MS) == [4, 905]  # minutes 7, 50, 52 and 64: the hour to 64


@BOTH
def test_rolling_sums_refuse_a_wrong_number_of_channels(sums: type[PyRollingSums]) -> None:
    agg = sums(W1H, 2)
    with pytest.raises(ValueError, match="expected 2 channel values, got 3"):
        agg.update(0, [1, 2, 3])
    assert agg.totals == [0, 0] and agg.last_bucket is None


def test_compiled_rolling_sums_refuse_overflow_and_bad_buckets() -> None:
    agg = RollingSums(W1H, 1)
    agg.update(0, [2**62])
    with pytest.raises(OverflowError):
        agg.update(0, [2**62])
    assert agg.totals == [2**62]  # unchanged by the refused update
    with pytest.raises(ValueError, match="increasing order"):
        agg.buckets = [[5, 1], [5, 1]]
    with pytest.raises(ValueError, match="a bucket must hold 2 ints"):
        agg.buckets = [[5, 1, 1]]
    assert agg.buckets == [[0, 2**62]]


@pytest.mark.parametrize("cap", [3, 50])
def test_recent_members_vs_brute_force(cap: int, members_impl: str) -> None:
    rng = np.random.default_rng(2)
    horizon = Window("2h", MINUTE_MS, 120)
    times = _stream(rng, 1500, MINUTE_MS)
    members = rng.integers(0, 12, len(times))
    agg = RecentMembers(horizon, cap=cap)
    history: list[tuple[int, int]] = []
    for t, m in zip(times.tolist(), members.tolist(), strict=True):
        # brute force: recency order of distinct members, most recent first
        order: list[int] = []
        last: dict[int, int] = {}
        for tm, mm in reversed(history):
            if mm not in last:
                last[mm] = tm
                order.append(mm)
        kept = [x for x in order[:cap] if _in_window(last[x], t, horizon)]
        assert agg.is_new(str(m), t) == (m not in kept)
        for w in (W10M, W1H):
            want = sum(_in_window(last[x], t, w) for x in kept)
            assert agg.count(t, w) == want
        agg.update(str(m), t)
        history.append((t, m))
        assert len(agg.last) <= cap


@pytest.mark.parametrize("cap", [3, 50])
def test_recent_members_after_late_updates_equal_the_time_sorted_stream(
    cap: int, members_impl: str
) -> None:
    """Updates arriving up to 20 minutes late: after each, the set is the one the same
    updates give in time order (ties in arrival order), so later events see no difference."""
    rng = np.random.default_rng(5)
    horizon = Window("2h", MINUTE_MS, 120)
    times = _stream(rng, 800, MINUTE_MS)
    arrival = times + (rng.random(len(times)) < 0.3) * rng.integers(1, 20 * MINUTE_MS, len(times))
    order = np.lexsort((np.arange(len(times)), arrival))
    stream = [(int(times[i]), str(rng.integers(0, 12))) for i in order]
    agg = RecentMembers(horizon, cap=cap)
    late = 0
    for k, (t, m) in enumerate(stream):
        late += bool(agg.last) and t < max(agg.last.values())
        agg.update(m, t)
        in_time = RecentMembers(horizon, cap=cap)
        for tt, mm in sorted(stream[: k + 1], key=lambda u: u[0]):  # stable: ties as arrived
            in_time.update(mm, tt)
        assert list(agg.last.items()) == list(in_time.last.items()), k
    assert late > 100


def test_the_compiled_member_functions_are_in_use() -> None:
    from risk_service.features import _rolling

    assert aggregates.members_count is _rolling.members_count
    assert aggregates.members_update is _rolling.members_update


@pytest.mark.parametrize("seed", range(4))
def test_compiled_member_functions_equal_python_on_random_streams(seed: int) -> None:
    """The same sightings (late ones, ties, caps, gaps past the horizon) into two dicts, one
    through each implementation: the same dicts in the same order, the same counts."""
    from risk_service.features import _rolling

    rng = np.random.default_rng(seed)
    cap, h_bucket, h_n = int(rng.choice([1, 3, 8, 1024])), MINUTE_MS, 60
    fast: dict[str, int] = {}
    slow: dict[str, int] = {}
    t = 1_700_000_000_000
    late = 0
    for _ in range(3000):
        t += int(rng.choice([0, 1, MINUTE_MS - 1, MINUTE_MS, 5 * MINUTE_MS, 90 * MINUTE_MS]))
        when = t - int(rng.integers(0, 30 * MINUTE_MS)) * (rng.random() < 0.2)
        member = f"m{rng.integers(0, 20)}"
        a = _rolling.members_update(fast, member, when, h_bucket, h_n, cap)
        b = aggregates.py_members_update(slow, member, when, h_bucket, h_n, cap)
        assert a is b and list(fast.items()) == list(slow.items())
        if not a:  # late: placed by the caller, as RecentMembers does
            late += 1
            for d in (fast, slow):
                agg = RecentMembers(Window("h", h_bucket, h_n), cap=cap)
                agg.last = d
                agg._update_late(member, when)
                d.clear()
                d.update(agg.last)
            assert list(fast.items()) == list(slow.items())
        for bucket, n in ((MINUTE_MS, 10), (MINUTE_MS, 60), (HOUR_MS, 1), (DAY_MS, 1)):
            query = t - int(rng.integers(0, 3)) * MINUTE_MS
            assert _rolling.members_count(fast, query, bucket, n) == aggregates.py_members_count(
                slow, query, bucket, n
            )
    assert late > 50, late


def test_compiled_member_update_over_its_cap_forgets_one_as_python_does() -> None:
    """A set restored with more members than the cap (a blob from a larger cap) loses one
    member an update in both implementations, not all the excess at once."""
    from risk_service.features import _rolling

    t = 1_700_000_000_000
    fast = {f"m{i}": t + i for i in range(10)}
    slow = dict(fast)
    for k in range(4):
        assert _rolling.members_update(fast, f"n{k}", t + 100 + k, MINUTE_MS, 60, 3)
        assert aggregates.py_members_update(slow, f"n{k}", t + 100 + k, MINUTE_MS, 60, 3)
        assert list(fast.items()) == list(slow.items()) and len(fast) == 10


def test_compiled_member_functions_refuse_bad_arguments() -> None:
    from risk_service.features import _rolling

    with pytest.raises(TypeError, match="members_count"):
        _rolling.members_count([], 0, 1, 1)
    with pytest.raises(ValueError, match="bucket width"):
        _rolling.members_count({"a": 1}, 0, 0, 1)
    with pytest.raises(ValueError, match="bucket width"):
        _rolling.members_update({}, "a", 0, -5, 1, 3)
    with pytest.raises(TypeError, match="members_update"):
        _rolling.members_update({}, "a", 0, 1, 1)
    with pytest.raises(TypeError):
        _rolling.members_update({"a": "not a time"}, "a", 5, 1, 1, 3)
    assert _rolling.members_count({}, 5, 1, 1) == 0


@pytest.mark.parametrize("cap", [2, 4, 1024])
def test_distinct_kernel_equals_recent_members(cap: int, members_impl: str) -> None:
    rng = np.random.default_rng(3)
    n = 3000
    ms = np.sort(rng.integers(0, 3 * DAY_MS, n) // 30_000 * 30_000).astype(np.int64)
    ent = np.where(rng.random(n) < 0.05, -1, rng.integers(0, 6, n)).astype(np.int64)
    mem = np.where(rng.random(n) < 0.1, -1, rng.integers(0, 9, n)).astype(np.int64)
    is_data = rng.random(n) < 0.9  # some query-only rows
    horizon, windows = W24H, [W1H, W24H]
    first, counts = distinct_members(ent, mem, is_data, ms, windows, horizon, cap)
    states: dict[int, RecentMembers] = {}
    for i in range(n):
        if ent[i] < 0:
            assert np.isnan(first[i]) and np.isnan(counts[:, i]).all()
            continue
        st = states.setdefault(int(ent[i]), RecentMembers(horizon, cap=cap))
        if mem[i] >= 0:
            assert first[i] == float(st.is_new(str(mem[i]), int(ms[i]))), i
        else:
            assert np.isnan(first[i])
        for w, win in enumerate(windows):
            assert counts[w, i] == st.count(int(ms[i]), win), (i, win)
        if is_data[i] and mem[i] >= 0:
            st.update(str(mem[i]), int(ms[i]))


def test_label_times_vs_brute_force() -> None:
    rng = np.random.default_rng(4)
    window = Window("2d", DAY_MS, 2)
    labels: list[int] = []
    agg = LabelTimes(window)
    t = 0
    for _ in range(2000):
        t += int(rng.choice([0, 1, HOUR_MS, DAY_MS // 3]))
        if rng.random() < 0.3:
            agg.update(t)  # effective at t: not seen by a query at exactly t
            labels.append(t)
        want = sum(1 for x in labels if x < t and _in_window(x, t, window))
        assert agg.get(t) == want


def test_previous_in_group() -> None:
    codes = np.array([0, 1, 0, -1, 1, 0, 0])
    mask = np.array([True, True, False, True, True, True, True])
    assert previous_in_group(codes, mask).tolist() == [-1, -1, 0, -1, 1, 0, 5]


def test_offline_windows_and_distincts_vs_brute_force() -> None:
    events, accounts, _ = make_world(n_accounts=10, n_events=800, seed=5)
    feats = compute_offline_features(events, accounts)
    ms = times_ms(events["timestamp"])
    order = np.argsort(ms, kind="stable")
    rank = np.empty(len(ms), dtype=np.int64)
    rank[order] = np.arange(len(ms))
    acc, dev = events["account_id"].to_numpy(), events["device_id"].to_numpy()
    for i in range(len(events)):
        earlier = rank < rank[i]
        in24 = earlier & (ms // MINUTE_MS > ms[i] // MINUTE_MS - 1440)
        assert feats["account_events_24h"].iloc[i] == np.sum(in24 & (acc == acc[i]))
        if pd.isna(dev[i]):
            assert np.isnan(feats["device_distinct_accounts_24h"].iloc[i])
        else:
            n_acc = len(set(acc[in24 & (dev == dev[i])]))
            assert feats["device_distinct_accounts_24h"].iloc[i] == n_acc
        seen7 = earlier & (ms // HOUR_MS > ms[i] // HOUR_MS - 168) & (acc == acc[i])
        want = len({d for d in dev[seen7] if not pd.isna(d)})
        assert feats["account_distinct_devices_7d"].iloc[i] == want


def test_compiled_batch_reads_and_updates_equal_python() -> None:
    """`read_into` / `update_from` (one C call for all of an entity's rolling sums, what the
    online engine uses) against the Python loops they replace, on a random stream."""
    from risk_service.features import _rolling
    from risk_service.features.aggregates import py_read_into, py_update_from

    rng = np.random.default_rng(7)
    windows = [(W10M, 2), (W1H, 3), (W7D, 1), (Window("3d", DAY_MS, 3), 2)]
    fast = [RollingSums(w, k) for w, k in windows]
    slow = [PyRollingSums(w, k) for w, k in windows]
    picks = ((0, 1), (0, 2, 3), (1,), (4, 5))
    reads = (
        (0, ((0, "count_10m", False), (1, "amount_10m", True))),
        (1, ((2, "amount_1h", True),)),
        (3, ((0, "count_3d", False), (1, "amount_3d", True))),
    )
    t = 1_700_000_000_000
    for _ in range(2000):
        t += int(rng.choice([0, 1_000, MINUTE_MS, HOUR_MS, DAY_MS], p=[0.2, 0.3, 0.3, 0.15, 0.05]))
        at = t - int(rng.integers(0, 2 * HOUR_MS)) if rng.random() < 0.2 else t
        values = [int(x) for x in rng.integers(0, 3, 6) * rng.integers(0, 10**7, 6)]
        got: dict[str, float] = {}
        want: dict[str, float] = {}
        _rolling.read_into(fast, at, reads, got)
        py_read_into(slow, at, reads, want)
        assert got == want and all(type(x) is float for x in got.values())
        _rolling.update_from(fast, at, values, picks)
        py_update_from(slow, at, values, picks)
        assert [_fields(f) for f in fast] == [_fields(s) for s in slow]


def test_compiled_batch_calls_refuse_bad_arguments() -> None:
    from risk_service.features import _rolling

    sums = [RollingSums(W1H, 2)]
    with pytest.raises(IndexError, match="no rolling sums at index 3"):
        _rolling.read_into(sums, 0, ((3, ((0, "f", False),)),), {})
    with pytest.raises(IndexError, match="no channel 2"):
        _rolling.read_into(sums, 0, ((0, ((2, "f", False),)),), {})
    with pytest.raises(TypeError, match="expected compiled RollingSums"):
        _rolling.read_into([PyRollingSums(W1H, 2)], 0, ((0, ((0, "f", False),)),), {})
    with pytest.raises(ValueError, match="a pick must be a tuple of 2 indexes"):
        _rolling.update_from(sums, 0, [1, 2, 3], ((0,),))
    with pytest.raises(IndexError, match="no event value 5"):
        _rolling.update_from(sums, 0, [1, 2, 3], ((0, 5),))
    with pytest.raises(ValueError, match="one pick per rolling sums"):
        _rolling.update_from(sums, 0, [1, 2], ())
    assert sums[0].totals == [0, 0] and sums[0].buckets == []  # nothing was added
