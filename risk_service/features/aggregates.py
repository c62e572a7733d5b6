"""Small online state objects (river-style ``update``/``get``) with bounded memory per entity.

All objects use ``__slots__`` and plain Python containers, so one entity's state
pickles into a small blob (what a Redis-backed store will keep).

Late events (a timestamp before the latest one this object has seen) are accepted
but windows are then evaluated at that latest time: a bucket once expired is gone.
A late update is placed where a time-sorted stream would have put it, so queries at
or after the latest time answer as for the sorted stream; with events arriving in
canonical order (the replay of a table) the results equal the offline computation
exactly.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence
from typing import TYPE_CHECKING

from risk_service.features.spec import DISTINCT_CAP, Window


class PyRollingSums:
    """Integer running sums of several channels over a bucketed window.

    ``RollingSums`` is this class compiled (`_rolling.c`, the same behaviour at ~1/8 of the
    CPU) wherever the extension was built; this one is the reference the tests compare it with.

    An update at ``t_e`` counts for a query at ``t`` iff
    ``floor(t_e / b) > floor(max(t, latest) / b) - n``: buckets of size ``b``, ``n`` of them.
    Memory: one small list per non-empty bucket, at most ``n``, in a list (not a deque:
    an empty deque takes 760 bytes, most of an entity's state when it held six).
    """

    __slots__ = ("bucket_ms", "buckets", "cutoff", "n", "totals")

    def __init__(self, window: Window, n_channels: int) -> None:
        self.bucket_ms = window.bucket_ms
        self.n = window.n_buckets
        self.buckets: list[list[int]] = []  # [bucket, v0, v1, ...] in bucket order
        self.totals = [0] * n_channels
        self.cutoff = -(1 << 62)  # buckets <= cutoff have expired

    def _expire(self, cutoff: int) -> None:
        buckets, totals = self.buckets, self.totals
        k = 0
        while k < len(buckets) and buckets[k][0] <= cutoff:
            old = buckets[k]
            for i in range(len(totals)):
                totals[i] -= old[i + 1]
            k += 1
        del buckets[:k]

    def get(self, t_ms: int) -> list[int]:
        """Channel totals as seen at ``t_ms`` (the list is live: read, don't keep)."""
        cutoff = t_ms // self.bucket_ms - self.n
        if cutoff > self.cutoff:
            self.cutoff = cutoff
            if self.buckets and self.buckets[0][0] <= cutoff:
                self._expire(cutoff)
        return self.totals

    @property
    def last_bucket(self) -> int | None:
        """The newest bucket held, or None."""
        return self.buckets[-1][0] if self.buckets else None

    def update(self, t_ms: int, values: Sequence[int]) -> None:
        if len(values) != len(self.totals):
            raise ValueError(f"expected {len(self.totals)} channel values, got {len(values)}")
        b = t_ms // self.bucket_ms
        cutoff = b - self.n
        if cutoff > self.cutoff:
            self.cutoff = cutoff
            if self.buckets and self.buckets[0][0] <= cutoff:
                self._expire(cutoff)
        elif b <= self.cutoff:
            return  # a late event already outside the window
        buckets, totals = self.buckets, self.totals
        for i, v in enumerate(values):
            totals[i] += v
        if buckets and buckets[-1][0] == b:
            last = buckets[-1]
            for i, v in enumerate(values):
                last[i + 1] += v
        elif not buckets or buckets[-1][0] < b:
            buckets.append([b, *values])
        else:  # late event inside the window: find or insert its bucket
            keys = [x[0] for x in buckets]
            j = bisect_left(keys, b)
            if keys[j] == b:
                for i, v in enumerate(values):
                    buckets[j][i + 1] += v
            else:
                buckets.insert(j, [b, *values])


# A read: (index of the rolling sums, ((channel, feature, is_amount), ...)).
Read = tuple[int, tuple[tuple[int, str, bool], ...]]


def py_read_into(aggs: list[PyRollingSums], t_ms: int, reads: Sequence[Read], v: dict) -> None:
    """For each read, the totals of ``aggs[i]`` as seen at ``t_ms`` into ``v``: an amount (in
    minor units) / 100, a count as a float. ``read_into`` is this in C."""
    for i, outs in reads:
        totals = aggs[i].get(t_ms)
        for channel, feature, is_amount in outs:
            x = totals[channel]
            v[feature] = x / 100.0 if is_amount else float(x)


def py_update_from(
    aggs: list[PyRollingSums], t_ms: int, values: list[int], picks: Sequence[tuple[int, ...]]
) -> None:
    """One event into every rolling sums of an entity: ``aggs[j]`` takes
    ``values[picks[j][c]]`` as its channel ``c``, if any is non-zero. ``update_from`` is this
    in C."""
    if len(picks) != len(aggs):
        raise ValueError("one pick per rolling sums")
    for agg, pick in zip(aggs, picks, strict=True):
        vals = [values[i] for i in pick]
        if any(vals):
            agg.update(t_ms, vals)


def py_members_count(last: dict[str, int], t_ms: int, bucket_ms: int, n_buckets: int) -> int:
    """`RecentMembers.count` on its dict (``members_count`` compiled where built).

    The members outside the window are a prefix of the time order, so this scans from both
    ends, O(min(inside, outside)): a busy shared IP has ~cap members inside.
    """
    cutoff = t_ms // bucket_ms - n_buckets
    b = bucket_ms
    n = len(last)
    newest, oldest = reversed(last.values()), iter(last.values())
    inside = outside = 0
    while inside + outside < n:
        if next(newest) // b <= cutoff:
            return inside
        inside += 1
        if inside + outside == n:
            break
        if next(oldest) // b > cutoff:
            return n - outside
        outside += 1
    return inside


def _forget_members(last: dict[str, int], t_ms: int, h_bucket: int, h_n: int, cap: int) -> None:
    """After a sighting at ``t_ms``: the least recently seen one past ``cap``, then every
    member whose bucket has left the horizon (a prefix of the time order)."""
    if len(last) > cap:
        del last[next(iter(last))]
    cutoff = t_ms // h_bucket - h_n
    while last:
        first = next(iter(last))
        if last[first] // h_bucket > cutoff:
            break
        del last[first]


def py_members_update(
    last: dict[str, int], member: str, t_ms: int, h_bucket: int, h_n: int, cap: int
) -> bool:
    """`RecentMembers.update` on its dict (``members_update`` compiled where built); False,
    with nothing changed, for a sighting older than the newest (the caller places it)."""
    seen = last.get(member)
    if seen is not None and t_ms < seen:
        return True  # a late sighting of a member seen since: nothing changes
    if last and t_ms < next(reversed(last.values())):
        return False
    if seen is not None:
        del last[member]
    last[member] = t_ms
    _forget_members(last, t_ms, h_bucket, h_n, cap)
    return True


if TYPE_CHECKING:
    RollingSums = PyRollingSums
    read_into = py_read_into
    update_from = py_update_from
    members_count = py_members_count
    members_update = py_members_update
else:
    try:
        from risk_service.features._rolling import (
            RollingSums,
            members_count,
            members_update,
            read_into,
            update_from,
        )
    except ImportError:  # not built (a source checkout without `pip install`): the same, slower
        RollingSums, read_into, update_from = PyRollingSums, py_read_into, py_update_from
        members_count, members_update = py_members_count, py_members_update


def as_compiled(agg: PyRollingSums) -> PyRollingSums:
    """The same sums as a `RollingSums` (compiled where built): a snapshot written before
    2026-12-05 holds `PyRollingSums`, which the compiled engine's calls refuse."""
    if type(agg) is RollingSums:
        return agg
    fresh = RollingSums(Window("restored", agg.bucket_ms, agg.n), len(agg.totals))
    fresh.cutoff, fresh.totals, fresh.buckets = agg.cutoff, agg.totals, agg.buckets
    return fresh


class RecentMembers:
    """Members of a distinct-set with their last-seen time, in time order of that sighting.

    Keeps at most ``cap`` members (forgetting the least recently seen) and forgets members
    whose last-seen bucket falls out of ``horizon``. Recency is time, ties in arrival
    order: an update older than the newest sighting (an event that arrived late) goes to its
    place in time, so the set after it is the one a time-sorted stream would give.
    """

    __slots__ = ("cap", "h_bucket", "h_n", "last")

    def __init__(self, horizon: Window, cap: int = DISTINCT_CAP) -> None:
        self.h_bucket = horizon.bucket_ms
        self.h_n = horizon.n_buckets
        self.cap = cap
        # member -> last-seen ms, in time order: the members outside a window form a prefix
        self.last: dict[str, int] = {}

    def is_new(self, member: str, t_ms: int) -> bool:
        """True if ``member`` is not in the set as seen at ``t_ms`` (first seen in horizon)."""
        seen = self.last.get(member)
        if seen is None:
            return True
        return seen // self.h_bucket <= t_ms // self.h_bucket - self.h_n

    def count(self, t_ms: int, window: Window) -> int:
        """Members last seen in ``window`` (so at most ``cap``)."""
        return members_count(self.last, t_ms, window.bucket_ms, window.n_buckets)

    def update(self, member: str, t_ms: int) -> None:
        if not members_update(self.last, member, t_ms, self.h_bucket, self.h_n, self.cap):
            self._update_late(member, t_ms)

    def _update_late(self, member: str, t_ms: int) -> None:
        """A sighting older than the newest one (an event that arrived late): to its place in
        time, then the same forgetting as `members_update`."""
        self.last.pop(member, None)  # seen no later than t_ms, or members_update answered
        last = self._insert_in_time_order(member, t_ms)
        _forget_members(last, t_ms, self.h_bucket, self.h_n, self.cap)

    def _insert_in_time_order(self, member: str, value: int) -> dict[str, int]:
        """A late sighting: after every member seen at or before ``value`` (O(members));
        returns the new dict."""
        items = list(self.last.items())
        at = bisect_right([seen for _, seen in items], value)
        items.insert(at, (member, value))
        self.last = dict(items)
        return self.last


class LabelTimes:
    """Label times (ms) of an entity's known frauds, sorted, forgotten after the window.

    A label counts at ``t`` iff ``label_ms < t`` (strictly) and its bucket is in the window.
    """

    __slots__ = ("bucket_ms", "n", "times")

    def __init__(self, window: Window) -> None:
        self.bucket_ms = window.bucket_ms
        self.n = window.n_buckets
        self.times: list[int] = []

    def get(self, t_ms: int) -> int:
        times = self.times
        if not times:
            return 0
        lo = bisect_left(times, (t_ms // self.bucket_ms - self.n + 1) * self.bucket_ms)
        return bisect_left(times, t_ms) - lo

    def update(self, label_ms: int) -> None:
        insort(self.times, label_ms)
        cutoff = (label_ms // self.bucket_ms - self.n + 1) * self.bucket_ms
        if self.times[0] < cutoff:
            del self.times[: bisect_left(self.times, cutoff)]


class EntityState:
    """Everything kept for one entity (account, device, ...): one blob in the state store."""

    __slots__ = ("distinct", "labels", "last_loc", "last_ms", "rolling")

    def __init__(
        self,
        rolling: list[RollingSums],
        distinct: list[RecentMembers],
        labels: list[LabelTimes],
    ) -> None:
        self.rolling = rolling
        self.distinct = distinct
        self.labels = labels
        self.last_ms: int | None = None
        self.last_loc: tuple[float, float, int] | None = None  # lat, lon, ms

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, state: tuple[object, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)


class Profile:
    """An account's profile row (static attributes of the accounts table)."""

    __slots__ = ("age", "created_ms", "credit_limit", "home", "income", "kyc")

    def __init__(
        self,
        created_ms: int | None,
        kyc: float,
        age: float,
        income: float,
        credit_limit: float,
        home: tuple[float, float] | None,
    ) -> None:
        self.created_ms = created_ms
        self.kyc = kyc
        self.age = age
        self.income = income
        self.credit_limit = credit_limit
        self.home = home
