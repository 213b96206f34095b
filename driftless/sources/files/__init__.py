"""File source: CSV, JSON Lines and Parquet files from a directory or any fsspec URL, window by window.

Kept free of imports so that ``driftless.spec`` can import ``driftless.sources.files.spec`` without a cycle; use
``from driftless.sources.files.source import FileSource``.
"""
