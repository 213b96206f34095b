"""Which quarantine entries a window's staged rows resolve: their key loaded with a cursor at least as recent.

The entries' keys and cursors are raw values (the quarantined record, as JSON); they are converted by the
extract's rules (``driftless.extract.transform``, on pandas) so that they compare as the staged rows' values
do. ``driftless.quarantine.store.resolve_loaded`` imports this module only when a pipeline has entries with a
key: a load without them never imports pandas.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from driftless.extract.staging import Manifest
from driftless.extract.transform import convert_column, convert_for
from driftless.spec import PipelineSpec


def resolved_entries(spec: PipelineSpec, manifest: Manifest, entries: Sequence[Any]) -> set[int]:
    """The ids of the entries the window's staged rows resolve.

    ``entries``: rows of ``id``, ``record_key``, ``record``; one is resolved when the staged rows hold its key
    with a cursor at least as recent as the quarantined record's (or the record had no cursor).
    """
    keys, cursor = list(spec.source.primary_key), spec.source.cursor
    types = {c.name: c.type for c in spec.columns}
    wanted = pd.DataFrame([json.loads(e.record_key) for e in entries], columns=keys)
    wanted["_id"] = [e.id for e in entries]
    wanted["_cursor"] = [json.loads(e.record).get(cursor) for e in entries]
    for name in keys:
        wanted[name] = convert_column(wanted[name].astype(object), types[name]).values
    wanted["_cursor"] = convert_for(spec.column(cursor), wanted["_cursor"].astype(object)).values  # as extracted
    resolved: set[int] = set()
    for name in manifest.files:
        staged = pq.read_table(Path(manifest.directory) / name, columns=list(dict.fromkeys([*keys, cursor])))
        frame = staged.to_pandas()
        loaded = pd.DataFrame({k: convert_column(frame[k], types[k]).values for k in keys})
        loaded["_loaded_cursor"] = convert_column(frame[cursor], types[cursor]).values
        hits = wanted.merge(loaded, on=keys, how="inner")
        newer = hits["_cursor"].isna() | (hits["_loaded_cursor"] >= hits["_cursor"])
        resolved.update(int(i) for i in hits.loc[newer.fillna(False), "_id"])
    return resolved
