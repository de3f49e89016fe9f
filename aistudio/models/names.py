"""Checks every model builder shares: a known model name and a class count from the dataset."""

from __future__ import annotations

import difflib

from aistudio import AistudioError

# where a library lists its model names (for the error message); others: "<library>.list_models()"
NAME_LISTS = {"torchvision": "torchvision.models.list_models()"}


def torchvision_models(kind: str) -> list[str]:
    """torchvision's model names of one kind: classification, detection or segmentation.

    Each builder module exposes ``available_models()`` and ``MODEL_KIND``: config checks
    (:mod:`aistudio.training.config_checks`) validate ``model.name`` against them before anything is built."""
    import torchvision.models as models

    return models.list_models(module=models if kind == "classification" else getattr(models, kind))


def check_name_and_classes(name: str, names: list[str], kind: str, num_classes: int | None) -> int:
    """Raise one clear error for an unknown ``name`` (with close matches) or a missing class count.

    ``kind``: ``classification`` for a torchvision model; a model from another library names it first
    (``timm classification``).
    """
    library, _, kind = kind.rpartition(" ")
    library = library or "torchvision"
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        listing = NAME_LISTS.get(library, f"{library}.list_models()")
        shown = ", ".join(names) if len(names) <= 20 else f"{len(names)} are available; see {listing}"
        raise AistudioError(f"model.name={name!r} is not a {library} {kind} model.{hint} ({shown})")
    if num_classes is None or int(num_classes) < 1:
        raise AistudioError("model.num_classes is not set — it is taken from the dataset's classes")
    return int(num_classes)
