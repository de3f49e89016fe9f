"""Process rank from the environment, usable before Lightning is imported or a Trainer exists."""

from __future__ import annotations

import os


def global_rank() -> int:
    """0 for a single process; the DDP/SLURM rank otherwise (only rank 0 writes run files)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                continue
    return 0
