"""The file handler behind ``logs/training.log`` (Hydra's job logging points at it)."""

from __future__ import annotations

import logging
from pathlib import Path


class RunLogHandler(logging.FileHandler):
    """A FileHandler that creates its folder, so the log can live in ``<run dir>/logs/``."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = "utf-8", delay: bool = False):
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(filename, mode=mode, encoding=encoding, delay=delay)
