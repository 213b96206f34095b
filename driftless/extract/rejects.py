"""The window's verdict on its rejects, before anything is written: ``check_reject_ratio``.

Read from the manifest and the staged quarantine files alone (no pandas, no pandera): the load runs it,
in processes that never extract. The rows are judged by ``driftless.extract.validate``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as arrow

from driftless.errors import ValidationFailed
from driftless.extract.staging import Manifest, read_parquet
from driftless.spec import PipelineSpec
from driftless.window import Window

TOP_REASONS = 5


def top_reasons(reasons: dict[str, int], n: int = TOP_REASONS) -> str:
    ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
    return "; ".join(f"{reason} ({count})" for reason, count in ranked)


def check_reject_ratio(spec: PipelineSpec, window: Window, manifest: Manifest) -> None:
    """Raise ``ValidationFailed`` when the window rejects too much: more than ``max_reject_ratio``, or all.

    A window that rejects some records and would load none never succeeds, whatever the ratio allows.
    Called before any write: the message says what failed and how (top reasons, sample keys), since
    the staged rejects are not kept once a CLI run ends.
    """
    limit = spec.max_reject_ratio
    extracted = manifest.extracted or 0
    if extracted == 0 or manifest.quarantined == 0:
        return
    ratio = manifest.quarantined / extracted
    nothing_left = manifest.records == 0
    if ratio <= limit and not nothing_left:
        return
    why = ("every record that was not a duplicate failed validation, so the window would load nothing; such a "
           "window always fails, whatever max_reject_ratio says" if nothing_left
           else f"above max_reject_ratio {limit:g}")
    raise ValidationFailed(
        f"pipeline {spec.name!r}, window {window.key}: {manifest.quarantined} of {extracted} records "
        f"({ratio:.1%}) failed validation, {why}. Nothing was written (no rows, no etl_quarantine entries) "
        f"and the watermark stays. Top reasons: {top_reasons(manifest.reasons)}. {_sample_keys(spec, manifest)}"
        "Fix the source data or the spec, then run the window again"
        + ("" if nothing_left else f"; or raise max_reject_ratio (now {limit:g}; 1 accepts any share) to load "
           "the good records and keep the rejected ones in etl_quarantine for `etl quarantine replay`")
    )


def _sample_keys(spec: PipelineSpec, manifest: Manifest, n: int = 3) -> str:
    """``First rejected: key [7]: amount: numeric; ...`` (keys and failed checks, never values)."""
    samples: list[str] = []
    try:
        for name in manifest.quarantine_files:
            table = read_parquet(Path(manifest.directory) / name, columns=["record_key", "errors"])
            for key, errors in zip(table.column("record_key").to_pylist(), table.column("errors").to_pylist(),
                                   strict=True):
                failed = ", ".join(dict.fromkeys(f"{e['column'] or '(row)'}: {e['check']}"
                                                 for e in json.loads(errors)))
                samples.append(f"{'/'.join(spec.source.primary_key)} {key or '(invalid key)'}: {failed}")
                if len(samples) == n:
                    break
            if len(samples) == n:
                break
    except (OSError, arrow.ArrowException, ValueError, KeyError):
        return ""
    return f"First rejected: {'; '.join(samples)}. " if samples else ""
