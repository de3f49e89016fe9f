"""What a request may name: ids that cannot leave their folder, and overrides from an allow-list.

Hydra instantiates ``_target_`` nodes and resolves ``${...}`` interpolations (``oc.env``, resolvers that
create folders), so an override from the network is code, not data, unless it is narrowed. A request may
change only the config groups and keys below, to plain values: no ``_target_`` or other ``_``-key anywhere
(in the key or inside a dict value), no ``hydra.*``, no ``+``/``++``/``~`` (adding or deleting keys), no
``$`` (interpolation), no sweeps, no package renames (``@``), and every path inside the data roots (a
model's weights may also be a run's checkpoint under the runs root). Everything is checked before a file
is written or a process started.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aistudio.server.errors import ApiError, invalid_override

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# config groups a request may choose an option of, or change keys in
ALLOWED_GROUPS = ("model", "optimizer", "scheduler", "augmentation", "hardware", "data", "task", "trainer",
                  "callbacks", "logger", "debug")
# top-level keys of conf/train.yaml a request may set (not exclusive: the one-run rule is not the client's
# to lift; not resume: that is the resume endpoint; not paths, hparams_search, checkpoint_io)
ALLOWED_KEYS = ("seed", "test", "plots", "heartbeat_s", "optimized_metric")
PATH_KEYS = ("data.project",)  # values that are always paths, whatever they look like
MAX_OVERRIDES = 64
MAX_OVERRIDE_CHARS = 512


def check_id(kind: str, value: str) -> str:
    """A run or experiment id: letters, digits, ``.``, ``_``, ``-``, not starting with ``.`` (so never ``..``,
    a path or a hidden name), at most 128 characters."""
    if not ID_PATTERN.fullmatch(value or ""):
        raise ApiError(422, f"invalid {kind} id",
                       f"{value!r} is not a valid {kind} id: letters, digits, '.', '_' and '-', starting with "
                       "a letter or digit, at most 128 characters")
    return value


def inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every symlink followed, is ``root`` or below it (``root``: resolved)."""
    try:
        resolved = path.expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return resolved == root or resolved.is_relative_to(root)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield str(key)
            yield from _strings(child)
    elif isinstance(value, (list, tuple)):
        for child in value:
            yield from _strings(child)


def _private_keys(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, child in value.items():
            if str(key).startswith("_"):
                yield str(key)
            yield from _private_keys(child)
    elif isinstance(value, (list, tuple)):
        for child in value:
            yield from _private_keys(child)


class OverridePolicy:
    """Checks request overrides against the allow-list; ``groups``: the config groups conf/ has."""

    def __init__(self, conf_dir: Path, data_roots: list[Path], runs_root: Path):
        self.groups = tuple(g for g in ALLOWED_GROUPS if (conf_dir / g).is_dir())
        self.data_roots = data_roots
        self.runs_root = runs_root

    def check(self, overrides: list[str]) -> list[str]:
        """The overrides, stripped, or an :class:`ApiError` (422) naming the first refused key and why."""
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import OverrideParseException

        if len(overrides) > MAX_OVERRIDES:
            raise ApiError(422, "too many overrides", f"{len(overrides)} overrides: at most {MAX_OVERRIDES}")
        parser = OverridesParser.create()
        checked = []
        for text in (o.strip() for o in overrides):
            key = text.lstrip("+~").split("=", 1)[0]
            if len(text) > MAX_OVERRIDE_CHARS or any(ord(c) < 32 for c in text):
                raise invalid_override(key[:80], f"{text[:80]!r}: at most {MAX_OVERRIDE_CHARS} characters, one line")
            try:
                override = parser.parse_overrides([text])[0]
            except OverrideParseException as err:
                raise invalid_override(key, f"{text!r} is not a valid override: {str(err).splitlines()[0]}") from None
            self._check_key(text, override)
            if override.is_sweep_override():
                raise invalid_override(key, f"{text!r}: a sweep (a,b / range / glob) is not a run — one value per key")
            self._check_value(text, override.key_or_group, override.value())
            checked.append(text)
        return checked

    def _check_key(self, text: str, override: Any) -> None:
        key = override.key_or_group
        if override.is_delete() or override.is_add() or override.is_force_add():
            raise invalid_override(key, f"{text!r}: adding (+) or deleting (~) config keys is not allowed from the "
                                        "API — set existing keys (key=value) or choose a group option (model=...)")
        if override.package is not None:
            raise invalid_override(key, f"{text!r}: package overrides (@) are not allowed from the API")
        parts = key.split(".")
        private = next((p for p in parts if p.startswith("_")), None)
        if private is not None:
            raise invalid_override(key, f"{text!r}: {private} cannot be set from the API (it chooses the code that "
                                        "is instantiated)")
        if parts[0] == "hydra":
            raise invalid_override(key, f"{text!r}: hydra.* cannot be set from the API (the service chooses the run "
                                        "directory)")
        if parts[0] not in self.groups and key not in ALLOWED_KEYS:
            raise invalid_override(key, f"{text!r}: {parts[0]} is not among the settings the API may change: the "
                                        f"groups {', '.join(self.groups)} (and their keys), and "
                                        f"{', '.join(ALLOWED_KEYS)}")

    def _check_value(self, text: str, key: str, value: Any) -> None:
        private = next(_private_keys(value), None)
        if private is not None:
            raise invalid_override(key, f"{text!r}: {private} cannot be set from the API (it chooses the code "
                                        "that is instantiated)")
        for string in _strings(value):
            if "$" in string:
                raise invalid_override(key, f"{text!r}: interpolations (${{...}}) are not allowed from the API — "
                                            "give the value itself")
            if key in PATH_KEYS or "/" in string or "\\" in string or string.startswith("~"):
                self._check_path(text, key, string)

    def _check_path(self, text: str, key: str, value: str) -> None:
        path = Path(value).expanduser()
        roots = [*self.data_roots, *([self.runs_root] if key.startswith("model.") else [])]
        if not path.is_absolute():
            raise invalid_override(key, f"{text!r}: give an absolute path inside a data root "
                                        f"({', '.join(map(str, self.data_roots))})")
        if not any(inside(path, root) for root in roots):
            raise invalid_override(key, f"{text!r}: {value} is outside the data roots the service may read "
                                        f"({', '.join(map(str, roots))}); start the server with --data-root to add one")
