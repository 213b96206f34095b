"""Loading a window into its target: the one load (``entry.load_rows``), write modes, schema evolution.

The loaders, one per database, live with their database in ``driftless.targets`` (``loader_for`` there).
"""
