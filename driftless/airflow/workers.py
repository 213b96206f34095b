"""Worker identity: which worker ran a task, when several workers share one host."""

from __future__ import annotations

import socket

from driftless.settings import settings


def task_hostname() -> str:
    """The hostname Airflow records for a task instance: ``$DRIFTLESS_WORKER_NAME`` if set, else the FQDN.

    Set ``[core] hostname_callable = driftless.airflow.workers.task_hostname`` and give each Celery worker
    its name (``worker1@<host>``): the UI and the metadata database then show which worker ran which task,
    also when the workers run on one machine (``make airflow EXECUTOR=celery``, the compose stack).
    """
    return settings().worker_name or socket.getfqdn()
