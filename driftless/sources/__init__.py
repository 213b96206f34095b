"""Sources: each yields chunks of records for a window, and nothing else."""
