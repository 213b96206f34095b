"""``Manifest.tables``: the staged chunks come back whole and in order while the next file is read ahead."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from driftless.errors import LoadError
from driftless.extract.staging import StagingWriter


def _staged(tmp_path: Path, chunks: int):
    writer = StagingWriter(tmp_path / "w", "p", "2025-01-01T00:00:00+00:00", "2025-01-02T00:00:00+00:00")
    for i in range(chunks):
        writer.write(pa.table({"id": pa.array(range(i * 10, i * 10 + 10), pa.int64())}))
    return writer.close(None)


def test_chunks_in_order(tmp_path):
    manifest = _staged(tmp_path, 7)
    got = [t["id"].to_pylist() for t in manifest.tables()]
    assert got == [list(range(i * 10, i * 10 + 10)) for i in range(7)]
    assert list(_staged(tmp_path / "none", 0).tables()) == []


def test_an_unreadable_file_fails_where_it_comes(tmp_path):
    manifest = _staged(tmp_path, 4)
    broken = Path(manifest.directory) / manifest.files[2]
    broken.write_bytes(b"not parquet")
    tables = manifest.tables()
    assert [next(tables)["id"][0].as_py(), next(tables)["id"][0].as_py()] == [0, 10]
    with pytest.raises(LoadError, match="unreadable"):
        next(tables)
    tables.close()
