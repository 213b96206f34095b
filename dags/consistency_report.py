"""The ``consistency_report`` DAG: after any load of a target table (or daily), diff it deeply and write the report.

This file only wires: see ``driftless.airflow.dags.report_dag`` for its schedule and params.
"""

from driftless.airflow.dags import report_dag

report_dag(globals())
