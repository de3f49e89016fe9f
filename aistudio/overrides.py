"""Hydra command-line overrides as text: ``+a.b=1`` / ``~a.b`` / ``++a.b=1`` / ``a.b=1``."""

from __future__ import annotations


def override_key(override: str) -> str:
    """The dotted key an override sets or deletes: ``+a.b=1`` -> ``a.b``."""
    return override.lstrip("+~").split("=", 1)[0]
