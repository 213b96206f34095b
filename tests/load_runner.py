"""Run one load step in its own process (for tests that kill it or its connection).

``python tests/load_runner.py SPEC_JSON START END MANIFEST_DIR RUN_ID``; connection ids come from the
environment (AIRFLOW_CONN_*), fail points from DRIFTLESS_FAILPOINT*. Exit 0 and a JSON line on success.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from driftless.errors import DriftlessError  # noqa: E402
from driftless.extract.staging import Manifest  # noqa: E402
from driftless.pipeline import load_window  # noqa: E402
from driftless.spec import parse_spec  # noqa: E402
from driftless.window import Window  # noqa: E402

if __name__ == "__main__":
    spec_json, start, end, directory, run_id = sys.argv[1:6]
    spec = parse_spec(json.loads(spec_json), "runner")
    try:
        result = load_window(spec, Window.parse(start, end), Manifest.read(directory), run_id)
    except DriftlessError as exc:
        print(f"load failed: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"loaded": result.loaded, "written": result.written}))
