"""driftless: declarative, idempotent, windowed data syncs."""

__version__ = "0.1.0"
