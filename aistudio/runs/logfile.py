"""The file handler behind ``logs/training.log`` (Hydra's job logging points at it)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


class RunLogHandler(logging.FileHandler):
    """A FileHandler that creates its folder, so the log can live in ``<run dir>/logs/``."""

    def __init__(self, filename: str, mode: str = "a", encoding: str | None = "utf-8", delay: bool = False):
        Path(filename).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(filename, mode=mode, encoding=encoding, delay=delay)


class ConsoleHandler(logging.StreamHandler):
    """The console handler: writes to whatever ``sys.stdout`` is at the moment of each line.

    A rich progress bar replaces ``sys.stdout`` with a proxy that prints above the bar while it is
    shown; a handler holding the original stream (logging's default) wrote the epoch lines over it.
    ``stream`` is accepted (Hydra's default config passes one) and ignored for that reason.
    """

    def __init__(self, stream: object = None):
        super().__init__(sys.stdout)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102 - see the class docstring
        return sys.stdout

    @stream.setter
    def stream(self, value: object) -> None:
        pass
