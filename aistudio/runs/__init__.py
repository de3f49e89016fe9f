"""The standard run directory: run.json lifecycle, metrics.json, atomic writes."""
