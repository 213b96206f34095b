"""REST API source: one request loop (``client``) with auth, pagination and reliability as small strategies.

Kept free of imports so that ``driftless.spec`` can import ``driftless.sources.rest.spec`` without a cycle; use
``from driftless.sources.rest.source import RestSource``.
"""
