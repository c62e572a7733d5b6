"""When an entity's feature state may be forgotten, and the little that must outlive it.

A state's windows, distinct sets and label counts all end within ``codec.retention_ms(kind)``
(the kind's longest window plus a day) of the latest time the state holds: an event, a
member's last sighting, a label. Queried later than that, it answers exactly as a new
state would, so it can be dropped without changing any feature. Two things it holds do
not expire, because the feature set defines them over all history:

- ``seconds_since_<kind>_previous_event`` reads ``last_ms`` (accounts, instruments,
  devices), however long ago that was;
- ``km_from_previous_location`` and the speed read the account's ``last_loc``.

For those kinds a forgotten state leaves a ``Dormant`` record (100-300 bytes with its
key) that revives as a new state carrying them. The in-memory store sweeps with these
rules (`MemoryStateStore.forget_idle`); Redis expires keys by TTL (`redis_state.py`,
where these kinds live as long as a profile instead).
"""

from __future__ import annotations

from typing import NamedTuple

from risk_service.features import codec
from risk_service.features.aggregates import EntityState
from risk_service.features.spec import ENTITY_KEYS, LABEL_KINDS, TIME_SINCE

RETENTION_MS: dict[str, int] = {kind: codec.retention_ms(kind) for kind in ENTITY_KEYS}
# How long a fraud label, once applied, is remembered as applied (so a redelivery is not
# counted twice): as long as it can still count in a label feature of any kind it reaches.
LABEL_HORIZON_MS = max(RETENTION_MS[kind] for kind in LABEL_KINDS)
# kinds whose last event (and, for accounts, last location) features read without a window
KEEPS_LAST_SEEN = frozenset(TIME_SINCE) | {"account"}
NEVER = -(1 << 62)


class Dormant(NamedTuple):
    """What is kept of a forgotten state whose kind has time-since or travel features."""

    last_ms: int
    last_loc: tuple[float, float, int] | None


def active_ms(st: EntityState) -> int:
    """The latest time ``st`` holds anything at (an upper bound for bucketed sums)."""
    latest = st.last_ms if st.last_ms is not None else NEVER
    for sums in st.rolling:
        last = sums.last_bucket
        if last is not None:  # a bucket holds times up to its end
            latest = max(latest, (last + 1) * sums.bucket_ms - 1)
    for members in st.distinct:
        if members.last:  # in time order: the newest sighting is last
            latest = max(latest, next(reversed(members.last.values())))
    for labels in st.labels:
        if labels.times:
            latest = max(latest, labels.times[-1])
    return latest


def dormant(kind: str, st: EntityState) -> Dormant | None:
    """What to keep of ``st`` once forgotten (None: nothing)."""
    if kind not in KEEPS_LAST_SEEN or st.last_ms is None:
        return None
    return Dormant(st.last_ms, st.last_loc if kind == "account" else None)


def revive(kind: str, kept: Dormant) -> EntityState:
    """A new state of ``kind`` that remembers the forgotten one's last event and location."""
    # imported here: online imports the store, which imports this module
    from risk_service.features.online import new_state

    st = new_state(kind)
    st.last_ms, st.last_loc = kept.last_ms, kept.last_loc
    return st
