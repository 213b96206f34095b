"""SQL source: a table or query of any SQLAlchemy database, window by window (``source``), and its spec model.

Kept free of imports so that ``driftless.spec`` can import ``driftless.sources.sql.spec`` without a cycle; use
``from driftless.sources.sql.source import SqlSource``.
"""
