"""The window's dedup index, kept on disk so that memory stays bounded by ``chunk_size``, not by the window.

Every row a window stages (loaded or quarantined) has an entry: its identity (the primary key values, or
the record's quarantine identity when the key is invalid), its ordering values (``dedup.order_by``, default
the cursor), its arrival number and where it was staged (see ``ChunkResult.index``). ``SpilledIndex.add``
writes each chunk's entries to the staging directory:

* all of them, as they are, to one file per chunk (read back only when the window has duplicates);
* per entry, a 64-bit hash of its identity and its arrival number (16 bytes), appended to one of
  ``BUCKETS`` files chosen by the hash, so that equal identities always share a bucket.

``SpilledIndex.losers`` reads one bucket at a time (16 bytes per entry, ``1/BUCKETS`` of the window): an
entry whose hash occurs once in its bucket has no duplicate. The others are gathered from the chunk files,
a batch of buckets at a time, and reduced by ``dedup_losers``, the rule an in-memory index of
the whole window applies: each key's rows are compared only with each other, so whole groups give the same
losers. Hashes are Python's (``a == b`` implies ``hash(a) == hash(b)``, across int/Decimal/float and
Timestamp/datetime); a collision only adds rows to compare, never drops one.

``WindowDedup`` is the extract's dedup step: it records each staged chunk's entries and, at the end of the
window, removes the superseded rows from the staged files (``StagingWriter.drop_superseded``). Replay
applies ``dedup_losers`` to the quarantined records it loads.

Memory: one chunk's entries while writing; one bucket plus one batch of candidate entries at the end; and
16 bytes per deduplicated row (the losers). Disk: about the index's size, removed by ``close``.
"""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from driftless.extract.staging import StagingWriter
from driftless.extract.transform import convert_column
from driftless.spec import PipelineSpec

BUCKETS = 256
#: Candidate entries gathered at once before they are reduced (more only when one identity has more rows).
BATCH = 200_000
_ENTRY = np.dtype([("h", "<i8"), ("seq", "<i8")])
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_IDENT_TAG = "\x00quarantine-identity"


_HASH_MODULUS = np.uint64(2**61 - 1)  # sys.hash_info.modulus on 64-bit CPython


def _int_hashes(values: np.ndarray) -> np.ndarray:
    """``hash(int(v))`` for each int64 ``v``, computed by numpy.

    CPython hashes an int as its magnitude modulo 2**61 - 1 with the int's sign, and -1 as -2.
    """
    negative = values < 0
    raw = values.view(np.uint64)
    magnitude = np.where(negative, ~raw + np.uint64(1), raw)  # |v| (also of -2**63) in uint64
    hashes = (magnitude % _HASH_MODULUS).astype(np.int64)
    hashes = np.where(negative, -hashes, hashes)
    hashes[hashes == -1] = -2
    return hashes


def _hashes(index: pd.DataFrame, keys: list[str]) -> np.ndarray:
    """Python's hash of each entry's identity: its key values, or its quarantine identity when it has one."""
    by_ident = index["_ident"].notna().to_numpy()
    if len(keys) == 1 and not by_ident.any():
        key = index[keys[0]]
        if pd.api.types.is_integer_dtype(key.dtype) and str(key.dtype) not in ("uint64", "UInt64") \
                and not key.isna().any():
            return _int_hashes(key.to_numpy(dtype=np.int64))  # one integer key (the usual case): no Python loop
    if len(keys) == 1:
        idents: list = index[keys[0]].tolist()
    else:
        idents = list(zip(*(index[k].tolist() for k in keys), strict=True))
    for i, ident in zip(np.flatnonzero(by_ident), index["_ident"].to_numpy()[by_ident], strict=True):
        idents[i] = (_IDENT_TAG, ident)
    return np.fromiter(map(hash, idents), dtype=np.int64, count=len(idents))


class SpilledIndex:
    """The dedup index of one window, on disk under ``directory`` (created afresh, removed by ``close``)."""

    def __init__(self, directory: Path, keys: list[str]) -> None:
        self.directory = directory
        self.keys = keys
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        self._chunks: list[tuple[int, int]] = []  # (first, last) arrival number of each chunk file
        # The bucket files stay open while chunks are added (opening 256 files per chunk cost more than writing
        # them); closed before they are read and by ``close``.
        self._buckets: dict[int, BinaryIO] = {}

    def _chunk_path(self, i: int) -> Path:
        return self.directory / f"index-{i:06d}.pkl"

    def _bucket_path(self, b: int) -> Path:
        return self.directory / f"bucket-{b:03d}.bin"

    def add(self, index: pd.DataFrame) -> None:
        """Spill one chunk's entries (with ``_seq`` set; arrival numbers grow from chunk to chunk)."""
        if index.empty:
            return
        with open(self._chunk_path(len(self._chunks)), "wb") as fh:
            pickle.dump(index, fh, protocol=pickle.HIGHEST_PROTOCOL)
        seq = index["_seq"].to_numpy(dtype=np.int64)
        self._chunks.append((int(seq[0]), int(seq[-1])))
        entries = np.empty(len(index), dtype=_ENTRY)
        entries["h"] = _hashes(index, self.keys)
        entries["seq"] = seq
        bucket = ((entries["h"].view(np.uint64) * _GOLDEN) >> np.uint64(56)).astype(np.uint8)  # 256 buckets
        entries = entries[np.argsort(bucket, kind="stable")]  # a radix sort on 8 bits
        bounds = np.concatenate(([0], np.cumsum(np.bincount(bucket, minlength=BUCKETS))))
        for b in np.flatnonzero(np.diff(bounds)).tolist():
            out = self._buckets.get(b)
            if out is None:
                out = self._buckets[b] = open(self._bucket_path(b), "ab")  # noqa: SIM115 - closed by _close_buckets
            out.write(entries[bounds[b]:bounds[b + 1]].tobytes())

    def _close_buckets(self) -> None:
        buckets, self._buckets = self._buckets, {}
        for fh in buckets.values():
            fh.close()

    def _candidates(self, b: int) -> np.ndarray:
        """Arrival numbers of the bucket's entries whose hash occurs more than once."""
        path = self._bucket_path(b)
        if not path.is_file():
            return np.empty(0, dtype=np.int64)
        entries = np.fromfile(path, dtype=_ENTRY)
        h = entries["h"]
        order = np.argsort(h, kind="stable")
        sorted_h = h[order]
        repeated = np.zeros(len(h), dtype=bool)
        same = sorted_h[1:] == sorted_h[:-1]
        repeated[1:] |= same
        repeated[:-1] |= same
        return entries["seq"][order[repeated]]

    def _gather(self, wanted: np.ndarray) -> pd.DataFrame:
        """The entries with these arrival numbers, in arrival order, read from the chunk files."""
        wanted = np.sort(wanted)
        parts = []
        for i, (first, last) in enumerate(self._chunks):
            lo, hi = np.searchsorted(wanted, [first, last + 1])
            if lo == hi:
                continue
            with open(self._chunk_path(i), "rb") as fh:
                index = pickle.load(fh)  # noqa: S301 - written by this process into its private staging dir
            parts.append(index[np.isin(index["_seq"].to_numpy(dtype=np.int64), wanted[lo:hi])])
        return pd.concat(parts, ignore_index=True)

    def losers(self, reduce: Callable[[pd.DataFrame], np.ndarray]) -> pd.DataFrame:
        """Entries (``_good``, ``_part``, ``_pos``) that another entry supersedes, by ``reduce``'s rule.

        ``reduce`` takes an index (entries in arrival order, positional) and returns a boolean mask of losers.
        """
        self._close_buckets()
        found: list[pd.DataFrame] = []
        batch: list[np.ndarray] = []
        size = 0

        def flush() -> None:
            nonlocal batch, size
            if size:
                index = self._gather(np.concatenate(batch))
                gone = index.loc[reduce(index), ["_good", "_part", "_pos"]]
                if len(gone):
                    found.append(gone)
            batch, size = [], 0

        for b in range(BUCKETS):
            candidates = self._candidates(b)
            if len(candidates):
                batch.append(candidates)
                size += len(candidates)
            if size >= BATCH:
                flush()
        flush()
        if not found:
            return pd.DataFrame({"_good": pd.Series(dtype=bool), "_part": pd.Series(dtype=np.int64),
                                 "_pos": pd.Series(dtype=np.int64)})
        return pd.concat(found, ignore_index=True)

    def close(self) -> None:
        self._close_buckets()
        shutil.rmtree(self.directory, ignore_errors=True)


def dedup_losers(index: pd.DataFrame, keys: list[str], order: list[str], keep: str) -> np.ndarray:
    """Rows of ``index`` that another row with the same identity supersedes (see ``ChunkResult.index``).

    Rows with a valid key compare by key, ordered by ``order`` then arrival (``_seq``); ``keep`` (``last``
    or ``first``) says which one stays. Rows whose key is invalid compare by their quarantine identity.
    """
    losers = np.zeros(len(index), dtype=bool)
    valid = index["_ident"].isna().to_numpy()
    by_key = index[valid]
    if len(by_key) and by_key.duplicated(subset=keys).any():
        ordered = by_key.sort_values([*order, "_seq"], na_position="first", kind="stable")
        losers[ordered.index[ordered.duplicated(subset=keys, keep=keep)].to_numpy()] = True
    by_record = index[~valid]
    if len(by_record):
        losers[by_record.index[by_record.duplicated(subset=["_ident"], keep=keep)].to_numpy()] = True
    return losers


class WindowDedup:
    """The dedup step of one window's extract: rows with one primary key are reduced to one.

    The latest by ``dedup.order_by`` (default the cursor; ties by arrival) stays, or the first with
    ``dedup.keep: first``; so every extracted row is exactly one of: loaded, quarantined, deduplicated.

    Usage (what ``driftless.pipeline.extract_window`` does)::

        dedup = WindowDedup(spec, writer)
        for each chunk:   dedup.add(checked.index, writer.stage(...))
        dedup.apply()     # at the end of the window, before writer.close
    """

    def __init__(self, spec: PipelineSpec, writer: StagingWriter) -> None:
        self.spec = spec
        self.writer = writer
        self.keys = list(spec.source.primary_key)
        self.order = list(spec.dedup.order_by or [spec.source.cursor])
        # On disk, so that memory stays bounded by chunk_size whatever the window's size.
        self._index = SpilledIndex(writer.directory / "dedup-index", self.keys)
        self._seq = 0
        self._rebuild()

    def _rebuild(self) -> None:
        """Entries of the rows an interrupted attempt staged (a resumed extract; nothing when fresh).

        Rows staged before the interruption take part in deduplication by key when they were loaded and
        by quarantine identity when they were rejected; a key rejected before and loaded after the
        interruption is not reduced (both outcomes stay, each counted once).
        """
        m, directory = self.writer.manifest, self.writer.directory
        columns = list(dict.fromkeys([*self.keys, *self.order]))
        types = {c.name: c.type for c in self.spec.columns}
        for part, name in enumerate(m.files):
            frame = pq.read_table(directory / name, columns=columns).to_pandas()
            index = pd.DataFrame({c: convert_column(frame[c], types[c]).values for c in columns})
            self._add(index.assign(_good=True, _pos=np.arange(len(index)), _ident=None, _part=part))
        for part, name in enumerate(m.quarantine_files):
            idents = pq.read_table(directory / name, columns=["entry_key"]).column("entry_key")
            index = pd.DataFrame({c: pd.Series([None] * len(idents), dtype=object) for c in columns})
            self._add(index.assign(_good=False, _pos=np.arange(len(index)), _ident=idents.to_pylist(),
                                   _part=part))

    def _add(self, index: pd.DataFrame) -> None:
        index["_seq"] = np.arange(self._seq, self._seq + len(index))
        self._seq += len(index)
        self._index.add(index)

    def add(self, index: pd.DataFrame, parts: tuple[int, int]) -> None:
        """Record one staged chunk: its ``ChunkResult.index`` and the (part, quarantine) files it went to."""
        if index.empty:
            return
        index = index.assign(_part=np.where(index["_good"].to_numpy(dtype=bool), *parts))
        self._add(index)

    def abandon(self) -> None:
        """Close the index's open files after a failed extract (what it wrote stays for a resumed one to redo)."""
        self._index._close_buckets()

    def apply(self) -> int:
        """Remove the superseded rows from the staged files; returns how many."""
        try:
            gone = self._index.losers(lambda index: dedup_losers(index, self.keys, self.order, self.spec.dedup.keep))
        finally:
            self._index.close()
        self.writer.drop_superseded(gone)
        return len(gone)
