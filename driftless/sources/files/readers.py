"""Reading one file as a stream of raw records: CSV, JSON Lines, Parquet; gzip and zstd decompressed on the fly.

Every reader yields ``(frame, lines)`` pairs: a DataFrame of the file's columns holding raw values (CSV: text;
JSON Lines: the JSON values, objects and arrays as JSON text for text columns; Parquet: the values as stored)
and the line of each record (CSV, JSON Lines: the line it starts on; Parquet: the row number, from 1). Nothing
materializes a file: CSV is read in blocks, JSON Lines line by line, Parquet in row batches of ``batch_rows``.
Conversion to the spec's types happens later, in ``driftless.extract.transform``, like for every source.

The bytes of the file as stored (before decompression) are hashed (SHA-256) as they are read, for the
manifest of loaded files.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from driftless.errors import SourceError
from driftless.sources.files.spec import FileSourceSpec

BLOCK = 1 << 20  # bytes read at a time
# CSV block size: pyarrow's streaming reader reads about 32 blocks ahead of the batch handed out, so the block
# size bounds the memory of a CSV read (256 KiB: ~9 MB ahead, batches of a few thousand rows).
CSV_BLOCK = 1 << 18
COMPRESSION_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
FILE_ERRORS = (OSError, EOFError, pa.ArrowException, ValueError, UnicodeError)


def compression_of(path: str, setting: str) -> str | None:
    """``gzip``, ``zstd`` or None for a file, by the spec's ``compression`` (``auto``: by the file name)."""
    if setting == "auto":
        lowered = path.lower()
        return next((codec for suffix, codec in COMPRESSION_SUFFIXES.items() if lowered.endswith(suffix)), None)
    return None if setting == "none" else setting


class HashingReader(io.RawIOBase):
    """The stored bytes of a file, counted and hashed (SHA-256) as they are read."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()
        self.bytes = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.sha256.update(data)
        self.bytes += n
        return n

    def drain(self) -> None:
        """Read (and hash) whatever the reader above left unread, so the hash covers the whole file."""
        while self.raw is not None:
            data = self.raw.read(BLOCK)
            if not data:
                return
            self.sha256.update(data)
            self.bytes += len(data)

    def close(self) -> None:
        try:
            self.raw.close()
        finally:
            super().close()


class ArrowStreamReader(io.RawIOBase):
    """A pyarrow input stream (a decompressing one) as a Python raw stream, for ``io.BufferedReader``."""

    def __init__(self, stream: pa.NativeFile) -> None:
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n


class OpenFile:
    """One file opened for reading: ``stream`` yields its decompressed bytes, ``hashed`` counts the stored ones."""

    def __init__(self, fs: Any, full: str, name: str, codec: str | None) -> None:
        self.name = name
        try:
            self.hashed = HashingReader(fs.open(full, "rb"))
        except OSError as exc:
            raise SourceError(f"file {name}: cannot open it: {exc.strerror or exc}") from exc
        raw: io.RawIOBase = self.hashed
        if codec is not None:
            raw = ArrowStreamReader(pa.CompressedInputStream(pa.PythonFile(self.hashed, mode="r"), codec))
        self.stream = io.BufferedReader(raw, BLOCK)

    def digest(self) -> str:
        self.hashed.drain()
        return self.hashed.sha256.hexdigest()

    def close(self) -> None:
        try:
            self.stream.close()
        except FILE_ERRORS:
            pass
        self.hashed.close()


def _where(name: str, line: int | None) -> str:
    return f"file {name}" + (f", line {line}" if line else "")


def _decode_error(name: str, line: int, encoding: str, exc: UnicodeDecodeError) -> SourceError:
    return SourceError(f"{_where(name, line)}: not valid {encoding} (byte {exc.object[exc.start:exc.start + 1]!r} "
                       f"at position {exc.start + 1} of the line); declare the file's encoding in "
                       "source.encoding (e.g. latin-1, cp1252)")


def first_undecodable_line(fs: Any, full: str, name: str, codec: str | None, encoding: str) -> SourceError | None:
    """Scan a file line by line for the first line that does not decode (after a reader refused the file)."""
    opened = OpenFile(fs, full, name, codec)
    try:
        decoder = codecs.getincrementaldecoder(encoding)()
        for number, raw in enumerate(opened.stream, 1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as exc:
                return _decode_error(name, number, encoding, exc)
    except FILE_ERRORS:
        return None
    finally:
        opened.close()
    return None


# ---------------------------------------------------------------------------------------------------------
# CSV: pyarrow's streaming reader, every column as text
# ---------------------------------------------------------------------------------------------------------


def read_header(opened: OpenFile, spec: FileSourceSpec) -> list[str]:
    """The column names of a CSV file: its first line (``header: true``) or ``csv.column_names``."""
    opts = spec.csv
    if not opts.header:
        assert opts.column_names is not None
        return list(opts.column_names)
    try:
        raw = opened.stream.readline()
    except FILE_ERRORS as exc:
        raise _file_error(opened.name, 0, exc) from exc
    encoding = "utf-8-sig" if spec.encoding == "utf-8" else spec.encoding
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        raise _decode_error(opened.name, 1, spec.encoding, exc) from exc
    if not text.strip():
        raise SourceError(f"{_where(opened.name, 1)}: expected a header line naming the columns, found "
                          f"{'an empty file' if not raw else 'an empty line'}")
    dialect: dict[str, Any] = {"delimiter": opts.delimiter, "doublequote": opts.double_quote,
                               "escapechar": opts.escape_char}
    if opts.quote_char is None:
        dialect["quoting"] = csv.QUOTE_NONE
    else:
        dialect["quotechar"] = opts.quote_char
    try:
        names = next(csv.reader([text.rstrip("\r\n")], **dialect))
    except csv.Error as exc:
        raise SourceError(f"{_where(opened.name, 1)}: cannot parse the header: {exc}") from exc
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SourceError(f"{_where(opened.name, 1)}: the header names column(s) {dupes} more than once")
    return names


def read_csv(opened: OpenFile, spec: FileSourceSpec, needed: list[str],
             batch_rows: int = 65_536) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """A CSV file's records in frames of about ``batch_rows``, all columns as text, with the line each starts on.

    pyarrow parses the file in small blocks (``CSV_BLOCK``, a few thousand rows each); the blocks are gathered
    in Arrow up to ``batch_rows`` rows and handed over as one frame, so the per-frame costs (pandas
    conversion, the source's columns) are paid per chunk, not per block.

    A line with another number of fields than the header is an error naming the line; a line whose fields
    are all empty (a blank line) comes through as a record of nulls, for the caller to skip and count.
    """
    opts = spec.csv
    names = read_header(opened, spec)
    missing = [n for n in needed if n not in names]
    if missing:
        line = 1 if opts.header else None
        raise SourceError(f"{_where(opened.name, line)}: the {'header' if opts.header else 'csv.column_names'} "
                          f"lacks column(s) {missing} that the spec reads; it has {names}")
    bad: dict[str, Any] = {}

    def invalid(row: Any) -> str:
        bad.update(number=row.number, text=row.text, expected=row.expected_columns, actual=row.actual_columns)
        return "error"

    start = 2 if opts.header else 1
    pending: list[tuple[pa.RecordBatch, np.ndarray]] = []
    held = 0
    try:
        reader = pcsv.open_csv(
            opened.stream,
            read_options=pcsv.ReadOptions(column_names=names, use_threads=False, block_size=CSV_BLOCK,
                                          encoding=spec.encoding),
            parse_options=pcsv.ParseOptions(
                delimiter=opts.delimiter, quote_char=opts.quote_char or False, double_quote=opts.double_quote,
                escape_char=opts.escape_char or False, newlines_in_values=opts.newlines_in_values,
                ignore_empty_lines=False, invalid_row_handler=invalid),
            convert_options=pcsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=True,
                null_values=opts.null_values, quoted_strings_can_be_null=False),
        )
        for batch in reader:
            n = batch.num_rows
            if opts.newlines_in_values:  # a value spanning lines moves the next records down
                extra = np.zeros(n, dtype=np.int64)
                for column in batch.columns:
                    extra += pc.fill_null(pc.count_substring(column, "\n"), 0).to_numpy(zero_copy_only=False)
                lines = start + np.arange(n, dtype=np.int64) + np.concatenate(([0], np.cumsum(extra)[:-1]))
                start += n + int(extra.sum())
            else:
                lines = start + np.arange(n, dtype=np.int64)
                start += n
            pending.append((batch, lines))
            held += n
            while held >= batch_rows:
                pending, rest = _split(pending, batch_rows)
                yield _gathered(pending)
                pending, held = rest, held - batch_rows
        if pending:
            yield _gathered(pending)
    except FILE_ERRORS as exc:
        if bad:  # pyarrow counts the lines of what it was given: the lines after the header
            line = bad["number"] + (1 if opts.header else 0) if bad["number"] is not None else None
            raise SourceError(f"{_where(opened.name, line)}: expected {bad['expected']} fields as in the "
                              f"header, found {bad['actual']}: {str(bad['text'])[:200]!r}") from exc
        raise _file_error(opened.name, start - 1, exc) from exc


def _split(parts: list[tuple[pa.RecordBatch, np.ndarray]],
           rows: int) -> tuple[list[tuple[pa.RecordBatch, np.ndarray]], list[tuple[pa.RecordBatch, np.ndarray]]]:
    """The first ``rows`` rows of the batches, and the rest (slices: nothing is copied).

    Frames of exactly ``batch_rows`` rows are handed on whole when the source's chunks have that size, instead
    of being cut and glued again into chunks.
    """
    head: list[tuple[pa.RecordBatch, np.ndarray]] = []
    for i, (batch, lines) in enumerate(parts):
        if batch.num_rows <= rows:
            head.append((batch, lines))
            rows -= batch.num_rows
            continue
        if rows:
            head.append((batch.slice(0, rows), lines[:rows]))
        return head, [(batch.slice(rows), lines[rows:]), *parts[i + 1:]]
    return head, []


def _gathered(parts: list[tuple[pa.RecordBatch, np.ndarray]]) -> tuple[pd.DataFrame, np.ndarray]:
    """Record batches and their lines as one frame (one pandas conversion for all of them)."""
    if len(parts) == 1:
        return parts[0][0].to_pandas(), parts[0][1]
    return (pa.Table.from_batches([b for b, _ in parts]).to_pandas(),
            np.concatenate([lines for _, lines in parts]))


def _file_error(name: str, last_line: int, exc: BaseException) -> SourceError:
    """A reader's failure as a SourceError naming the file and the last line read before it."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = f"after line {last_line}" if last_line > 0 else "at its start"
    if "truncated" in text.lower() or isinstance(exc, EOFError):
        return SourceError(f"file {name}: the file is truncated or its compression is corrupt ({text}), {where}; "
                           "nothing of the window was loaded. Replace the file and run the window again")
    if "utf8" in text.lower().replace("-", "") or isinstance(exc, UnicodeError):
        return SourceError(f"file {name}: not valid text in the declared encoding ({text}), {where}")
    return SourceError(f"file {name}: cannot read it, {where}: {text}")


# ---------------------------------------------------------------------------------------------------------
# JSON Lines: one JSON object per line
# ---------------------------------------------------------------------------------------------------------


def _text(value: Any) -> Any:
    if value is None or isinstance(value, str | float):
        return value  # a float is converted, or refused, by driftless.extract.transform
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def read_jsonl(opened: OpenFile, spec: FileSourceSpec, needed: list[str], text_columns: set[str],
               batch_rows: int) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """A JSON Lines file's objects in batches of ``batch_rows``; blank lines are skipped (and counted by lines).

    A line that is not JSON, or not an object, is an error naming the line.
    """
    decoder = codecs.getincrementaldecoder(spec.encoding)()
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    number = 0

    def frame() -> tuple[pd.DataFrame, np.ndarray]:
        data = {}
        for name in needed:
            values = [r.get(name) for r in records]
            if name in text_columns and not all(v is None or type(v) is str for v in values):
                values = [_text(v) for v in values]
            data[name] = pd.Series(values, dtype=object)
        return pd.DataFrame(data, index=pd.RangeIndex(len(records))), np.asarray(lines, dtype=np.int64)

    try:
        for raw in opened.stream:
            number += 1
            try:
                text = decoder.decode(raw)
            except UnicodeDecodeError as exc:
                raise _decode_error(opened.name, number, spec.encoding, exc) from exc
            if number == 1 and text.startswith("\ufeff"):
                text = text[1:]
            if not text.strip():
                continue
            try:
                record = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                raise SourceError(f"{_where(opened.name, number)}: not valid JSON ({exc.msg} at column {exc.colno})"
                                  + ("; the file may be truncated" if not raw.endswith(b"\n") else "")) from exc
            if type(record) is not dict:
                raise SourceError(f"{_where(opened.name, number)}: expected a JSON object per line, got "
                                  f"{type(record).__name__}: {text.strip()[:100]!r}")
            records.append(record)
            lines.append(number)
            if len(records) >= batch_rows:
                yield frame()
                records, lines = [], []
    except FILE_ERRORS as exc:
        if isinstance(exc, SourceError):
            raise
        raise _file_error(opened.name, number, exc) from exc
    if records:
        yield frame()


# ---------------------------------------------------------------------------------------------------------
# Parquet: row batches of the columns the spec reads
# ---------------------------------------------------------------------------------------------------------


def _typed_kind(kind: pa.DataType) -> bool:
    """Whether a Parquet column of this Arrow type is handed over typed (as ``pd.ArrowDtype``).

    ``driftless.extract.transform._convert_arrow`` checks such a column without Python objects or text.
    """
    return (pa.types.is_integer(kind) or pa.types.is_decimal128(kind) or pa.types.is_string(kind)
            or pa.types.is_large_string(kind) or pa.types.is_boolean(kind) or pa.types.is_date32(kind)
            or pa.types.is_float64(kind) or (pa.types.is_timestamp(kind) and kind.unit != "ns"))


def _series(column: pa.ChunkedArray | pa.Array, typed: bool = False) -> pd.Series:
    """A Parquet column as raw values, keeping a NaN apart from a NULL and large integers exact.

    ``typed``: columns of the types ``_typed_kind`` names are kept as ``pd.ArrowDtype`` (no copy; NULL apart from
    NaN), for conversion to check as they are.
    """
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.dictionary_decode()
        kind = column.type
    if typed and _typed_kind(kind):
        return pd.Series(pd.arrays.ArrowExtensionArray(column), copy=False)
    if pa.types.is_floating(kind) and column.null_count < len(column) and pc.any(pc.is_nan(column)).as_py():
        return pd.Series(column.to_pylist(), dtype=object)  # NaN is a value (refused later), NULL stays NULL
    if (pa.types.is_integer(kind) and column.null_count) or pa.types.is_nested(kind):
        return pd.Series(column.to_pylist(), dtype=object)  # not through float64; lists/structs as Python values
    return column.to_pandas()


def read_parquet(opened: OpenFile, spec: FileSourceSpec, needed: list[str],
                 batch_rows: int, typed: bool = False) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """A Parquet file's rows in batches of ``batch_rows``, the needed columns only; lines are row numbers.

    ``typed``: the columns ``_typed_kind`` names come as ``pd.ArrowDtype`` columns (only where no transform reads
    the raw values: a derive expression or function expects the values as other readers give them).
    """
    handle = opened.hashed.raw
    try:
        opened.digest()  # Parquet is read from its end: hash it in one pass first
        handle.seek(0)
        parquet = pq.ParquetFile(handle)
    except FILE_ERRORS as exc:
        raise SourceError(f"file {opened.name}: not a readable Parquet file ({str(exc).splitlines()[0]})") from exc
    names = parquet.schema_arrow.names
    missing = [n for n in needed if n not in names]
    if missing:
        raise SourceError(f"file {opened.name}: the Parquet schema lacks column(s) {missing} that the spec reads; "
                          f"it has {names}")
    row = 1
    try:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=needed, use_threads=False):
            n = batch.num_rows
            frame = pd.DataFrame({name: _series(batch.column(name), typed) for name in needed},
                                 index=pd.RangeIndex(n))
            yield frame, np.arange(row, row + n, dtype=np.int64)
            row += n
    except FILE_ERRORS as exc:
        raise SourceError(f"file {opened.name}: cannot read row group data after row {row - 1} "
                          f"({str(exc).splitlines()[0]}); the file may be truncated") from exc
    if row - 1 != parquet.metadata.num_rows:
        raise SourceError(f"file {opened.name}: read {row - 1} rows but its metadata says {parquet.metadata.num_rows}")
