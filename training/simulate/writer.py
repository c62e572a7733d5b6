"""Writing tables reproducibly and atomically: temp names in the target directory, then os.replace.

All data files are written to temp names first and only then moved into place, manifest last,
so a failure never leaves a half-written file (or a mixed set) where a good one stood.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

TMP_SUFFIX = ".tmp"
# Pinned writer options: the same table always gives the same bytes (for a given pyarrow).
PARQUET_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
    "data_page_version": "1.0",
    "row_group_size": 1 << 20,
}


def write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, **PARQUET_OPTIONS)


def write_csv(table: pa.Table, path: Path) -> None:
    """Timestamps as ISO 8601 with a Z suffix; missing values as empty fields."""
    cols = []
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = pc.strftime(col.cast(pa.timestamp("s", tz="UTC")), format="%Y-%m-%dT%H:%M:%SZ")
        cols.append(col)
    pa_csv.write_csv(pa.table(cols, names=table.column_names), path)


WRITERS = {"parquet": write_parquet, "csv": write_csv}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_all(out_dir: Path, tables: dict[str, pa.Table], fmt: str, manifest: dict) -> dict:
    """Write every table and then the manifest (with each file's SHA-256); all or nothing."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[Path, Path]] = []
    files: dict[str, dict[str, str]] = {}
    try:
        for name, table in tables.items():
            final = out_dir / f"{name}.{fmt}"
            tmp = out_dir / f".{final.name}{TMP_SUFFIX}"
            pending.append((tmp, final))
            WRITERS[fmt](table, tmp)
            files[name] = {"path": final.name, "sha256": sha256(tmp)}
        manifest = {**manifest, "files": files}
        tmp = out_dir / f".manifest.json{TMP_SUFFIX}"
        pending.append((tmp, out_dir / "manifest.json"))
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for tmp, final in pending:
            os.replace(tmp, final)
    finally:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
    return manifest
