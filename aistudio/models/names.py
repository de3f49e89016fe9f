"""Checks every model builder shares: a known torchvision name and a class count from the dataset."""

from __future__ import annotations

import difflib

from aistudio import AistudioError


def check_name_and_classes(name: str, names: list[str], kind: str, num_classes: int | None) -> int:
    """Raise one clear error for an unknown ``name`` (with close matches) or a missing class count."""
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        shown = ", ".join(names) if len(names) <= 20 else f"{len(names)} are available; see torchvision.models.list_models()"
        raise AistudioError(f"model.name={name!r} is not a torchvision {kind} model.{hint} ({shown})")
    if num_classes is None or int(num_classes) < 1:
        raise AistudioError("model.num_classes is not set — it is taken from the dataset's classes")
    return int(num_classes)
