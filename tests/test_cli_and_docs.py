"""The `risk` command's argument handling, time parsing, and docs generated from code."""

from __future__ import annotations

from pathlib import Path

import pytest

from risk_service import schema
from risk_service.timeutil import parse_instant, to_millis
from training.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse exits on its own errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["simulate", "--out", "x", "--accounts", "-5"], "--accounts"),
        (["simulate", "--out", "x", "--days", "0"], "--days"),
        (["simulate", "--out", "x", "--format", "xlsx"], "--format"),
        (["simulate", "--out", "x", "--start", "yesterday"], "--start"),
        (["simulate", "--out", "x", "--fraud-rate", "0.9"], "--fraud-rate"),
        (["train", "--data", "x", "--train-until", "soon"], "--train-until"),
        (["train", "--credit-data", "x.csv"], "--target"),
    ],
)
def test_bad_arguments_get_one_line_and_status_2(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(argv, capsys)
    assert code == 2
    assert named in err
    assert len(err.strip().splitlines()) == 1


def test_unwritable_out_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, err = run(["simulate", "--out", str(blocker / "world"), "--quiet"], capsys)
    assert code == 2
    assert "--out" in err


def test_missing_data_dir_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["train", "--data", str(tmp_path / "nope"), "--quiet"], capsys)
    assert code == 2
    assert "no such directory" in err


def test_instants_are_iso_8601_and_naive_means_utc() -> None:
    assert to_millis("2026-01-01") == 1_767_225_600_000
    assert to_millis("2026-01-01T08:00:00+08:00") == 1_767_225_600_000
    assert parse_instant("2026-01-01T00:00:00Z") == parse_instant("2026-01-01")
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_instant("01/02/2026")


def test_data_docs_match_the_schema() -> None:
    text = (ROOT / "docs" / "data.md").read_text()
    assert schema.render_markdown().strip() in text
