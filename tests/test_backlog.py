"""The degraded-event backlog's file: durable entries, orphans adopted once, live files not."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from risk_service.backlog import Backlog, DegradedEvent
from risk_service.backlog_file import BacklogFile


def item(event_id: str, **event: object) -> DegradedEvent:
    request = SimpleNamespace(
        event_id=event_id,
        kind="payment",
        event={"event_id": event_id, "account_id": "acct-9", "device_id": None, **event},
        account={"account_id": "acct-9", "kyc_level": 2},
    )
    return DegradedEvent.hashed(request, b"\x00record\xff", {"account": "h"}, lambda v: f"H({v})")


def test_identifiers_are_hashed_and_an_entry_round_trips() -> None:
    one = item("e1", amount=12.5, merchant_id="m-1")
    assert one.event["account_id"] == "H(acct-9)" and one.event["merchant_id"] == "H(m-1)"
    assert one.event["device_id"] is None and one.event["amount"] == 12.5  # missing stays so
    assert one.account == {"account_id": "H(acct-9)", "kyc_level": 2}
    assert DegradedEvent.from_bytes(one.to_bytes()) == one


def test_a_live_file_is_never_adopted_a_dead_one_once(tmp_path: Path) -> None:
    live, other = BacklogFile(tmp_path), BacklogFile(tmp_path)
    live.add("e1", item("e1").to_bytes())
    live.add("e2", item("e2").to_bytes())
    live.remove("e1")
    assert other.adopt_orphans() == []  # its process is alive (it holds the lock)
    live.close()  # the process goes with an entry left: the file stays for the next one
    adopted = other.adopt_orphans()
    assert [event_id for event_id, _ in adopted] == ["e2"]
    assert DegradedEvent.from_bytes(adopted[0][1]) == item("e2")
    assert other.entries() == adopted  # durable in the adopter's file before the orphan went
    assert sorted(p.name for p in tmp_path.glob("backlog-*.sqlite")) == [other.path.name]
    third = BacklogFile(tmp_path)
    assert third.adopt_orphans() == []  # taken once only
    third.close()
    other.remove("e2")
    other.close()
    assert list(tmp_path.glob("backlog-*.sqlite")) == [], "an emptied file is deleted at close"


def test_the_backlog_applies_adopted_entries_and_forgets_them(tmp_path: Path) -> None:
    first = Backlog(lambda e: "OK", file=BacklogFile(tmp_path))
    first.file.add("e3", item("e3").to_bytes())  # type: ignore[union-attr]
    first.file.close()  # type: ignore[union-attr]  # as if its process died here
    applied: list[str] = []
    second = Backlog(lambda e: applied.append(e.event_id) or "OK", file=BacklogFile(tmp_path))
    second.start()
    assert second.drain(timeout=5.0) and applied == ["e3"]
    assert second.file is not None and second.file.entries() == []
    second.stop()
    assert list(tmp_path.glob("backlog-*.sqlite")) == []


def test_a_damaged_orphan_is_left_alone_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    damaged = tmp_path / "backlog-1-damaged.sqlite"
    damaged.write_bytes(b"not a database" * 100)
    mine = BacklogFile(tmp_path)
    try:
        assert mine.adopt_orphans() == []
        assert mine.adopt_orphans() == []  # refused once, not retried every scan
    finally:
        mine.close()
    assert damaged.exists()
    assert len([r for r in caplog.records if "not adopted" in r.getMessage()]) == 1
