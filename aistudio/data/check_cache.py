"""A cache of passed image checks, so validating a large project a second time only stats its files.

One JSON file per dataset.json (named by a hash of its absolute path) under ``$AISTUDIO_CACHE_DIR``
(default ``~/.cache/aistudio/checks``). An entry is keyed by everything its check read: the image's
path, size and mtime (ns), the declared width/height, and the mask's path, size and mtime; its value
says which check passed (``full`` also answers ``header``), the image's size and the check's warning.
The file as a whole holds one *context*: the annotation parser and what its project-level check
returned (e.g. the mask classes), so a changed ``ignore_index`` or ``mask_values`` starts afresh.

Only passed checks are stored: a broken entry is checked (and reported) again every time. A cache
file that is corrupt, foreign or from another context is ignored, never an error; one that cannot be
written is a warning (the next load checks everything again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aistudio import __version__
from aistudio.data.project import ImageRecord

FORMAT = 1
MODES = {"header": ("header", "full"), "full": ("full",)}  # the stored checks that answer each mode
log = logging.getLogger("aistudio.data.datamodule")  # the run log's name for dataset lines

Stored = list[Any]  # [mode, width, height, warning] in the file
Passed = tuple[str, tuple[int, int], "str | None"]  # (mode, size, warning) of a passed check


def cache_dir() -> Path:
    return Path(os.environ.get("AISTUDIO_CACHE_DIR") or Path.home() / ".cache" / "aistudio" / "checks")


class CheckCache:
    """The passed checks of one dataset.json in one context; :meth:`lookup` then :meth:`save`."""

    def __init__(self, dataset: Path, context: str):
        self.dataset = str(dataset.resolve())
        self.context = f"aistudio {__version__}, format {FORMAT}: {context}"
        self.path = cache_dir() / f"{hashlib.sha256(self.dataset.encode()).hexdigest()[:24]}.json"
        self.stored = self._read()
        self.keys: list[str | None] = []

    def _read(self) -> dict[str, Stored]:
        """The stored entries, or none when the file is missing, unreadable or not this project's."""
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        if (not isinstance(data, dict) or data.get("format") != FORMAT or data.get("dataset") != self.dataset
                or data.get("context") != self.context or not isinstance(data.get("entries"), dict)):
            return {}
        return data["entries"]

    def lookup(self, records: Sequence[ImageRecord], mode: str) -> list[Passed | None]:
        """(stored mode, size, warning) of each record whose files are unchanged since a check of ``mode`` (or
        a stricter one) passed, else None."""
        self.keys = [entry_key(record) for record in records]
        accepted = MODES[mode]
        found: list[Passed | None] = []
        for key in self.keys:
            value = self.stored.get(key) if key is not None else None
            try:
                found.append((value[0], (int(value[1]), int(value[2])), value[3])
                             if value and value[0] in accepted else None)
            except (TypeError, ValueError, IndexError, KeyError):
                found.append(None)  # a hand-edited or damaged entry: check again
        return found

    def save(self, passed: Sequence[Passed | None]) -> None:
        """Store the passed checks (None: failed) of the records given to :meth:`lookup`; written only when it
        changes, atomically; an unwritable folder is a warning."""
        entries: dict[str, Stored] = {}
        for key, result in zip(self.keys, passed):
            if key is not None and result is not None:
                mode, (width, height), warning = result
                entries[key] = [mode, width, height, warning]
        if entries == self.stored:
            return
        from aistudio.runs.atomic import atomic_write_text

        data = {"format": FORMAT, "dataset": self.dataset, "context": self.context, "entries": entries}
        try:
            atomic_write_text(self.path, json.dumps(data, separators=(",", ":")))
        except OSError as err:
            log.warning("cannot write the image check cache %s (%s): the next load checks every image again "
                        "— set AISTUDIO_CACHE_DIR to a writable folder", self.path, err.strerror or err)
        self.stored = entries


def entry_key(record: ImageRecord) -> str | None:
    """What an entry's check depends on, or None when a file is missing (no cache: the check reports it)."""
    parts = [record.path, *_stat(record.path), str(record.width), str(record.height)]
    if record.mask is not None:
        mask = str(record.mask)
        parts += [mask, *_stat(mask)]
    return None if "" in parts else "\x1f".join(parts)


def _stat(path: str) -> tuple[str, str]:
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return "", ""
    return str(stat.st_size), str(stat.st_mtime_ns)
