"""File source: CSV, JSON Lines and Parquet files from a directory or any fsspec URL, window by window.

Kept free of imports so that ``etl.spec`` can import ``connectors.files.spec`` without a cycle; use
``from connectors.files.source import FileSource``.
"""
