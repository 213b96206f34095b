"""One Airflow DAG per pipeline spec of ``$DRIFTLESS_SPECS_DIR``, else of ``pipelines/`` beside this file.

This file only wires: the DAGs are built by ``driftless.airflow.dags`` (installed with driftless), from
the spec files alone (no database, no network at parse time).
"""

from driftless.airflow.dags import pipeline_dags

pipeline_dags(globals())
