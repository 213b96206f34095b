"""Quarantine: rows that fail validation are kept, with their reasons, and can be loaded once fixed.

The extract stages rejected rows beside the good ones (``driftless.extract.validate``, ``.staging``);
``store`` writes them to ``etl_quarantine`` in the load's transaction and reads them back; ``replay``
loads the entries that pass under the current spec. ``etl quarantine list|replay`` is in ``driftless.cli``.
"""
