"""REST API source: one request loop (``client``) with auth, pagination and reliability as small strategies.

Kept free of imports so that ``etl.spec`` can import ``connectors.rest.spec`` without a cycle; use
``from connectors.rest.source import RestSource``.
"""
