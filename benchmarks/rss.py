"""Peak memory of the calling process, read where ``exec`` resets it.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` survives ``exec`` on Linux: a case process started by a
runner that had grown large reports the runner's peak. ``VmHWM`` in ``/proc/self/status`` is the
high-water mark of this process image's resident set and starts again at each ``exec``.

A case reads ``baseline_mb()`` once its imports are done (the interpreter plus imports) and
``peak_mb()`` at the end; both are printed side by side, so the step's own memory is their difference.
"""

from __future__ import annotations

from pathlib import Path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line (Linux only)")


def peak_mb() -> float:
    """This process image's peak resident set (VmHWM), MB."""
    return round(_status_kb("VmHWM") / 1024, 1)


def baseline_mb() -> float:
    """The peak so far: call it once the imports are done, before the measured step (interpreter + imports)."""
    return peak_mb()


def import_window_modules() -> None:
    """Import what a window imports on first use, so that a window case's timing and baseline leave imports out.

    ``driftless.pipeline`` imports the extract's steps (pandas, pandera) and the connectors inside the functions
    that run them, so that a load task never imports them; a benchmark that imported only the pipeline would
    time those imports inside its first window (0.5-0.9 s here). An Airflow extract task pays them once per task
    process, as it always did.
    """
    import driftless.extract.dedup  # noqa: F401
    import driftless.extract.staging  # noqa: F401
    import driftless.extract.transform  # noqa: F401
    import driftless.extract.validate  # noqa: F401
    from driftless.pipeline import source_classes

    source_classes()
