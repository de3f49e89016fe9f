"""Config mistakes caught right after composition, before data is loaded or a model is built.

Without this, an optimizer argument the optimizer does not take surfaces only when Lightning calls
``configure_optimizers`` (after the dataset was validated and the model built), and an unknown model
name only after the data. Each check names the config key and the fix in one line.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

from aistudio import AistudioError

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _target(path: str, key: str) -> Any:
    from hydra.utils import get_object

    try:
        return get_object(path)
    except Exception as err:  # noqa: BLE001 - Hydra raises ImportError/ValueError variants
        raise AistudioError(f"{key}._target_={path!r} cannot be imported ({str(err).splitlines()[0]}) — check "
                            "the spelling in conf/ or on the command line") from None


def check_arguments(key: str, node: dict[str, Any] | None) -> None:
    """Every key of ``node`` must be a parameter of its ``_target_`` (unless it takes ``**kwargs``)."""
    if not isinstance(node, dict) or "_target_" not in node:
        return
    target = _target(node["_target_"], key)
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    parameters = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(node) - HYDRA_KEYS - set(parameters))
    if unknown:
        names = [n for n, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL
                 and n not in ("self", "params")]
        close = difflib.get_close_matches(unknown[0], names, n=3)
        takes = f"did you mean {' or '.join(close)}?" if close else f"it takes: {', '.join(names[:15])}" + (
            ", ..." if len(names) > 15 else "")
        name = node["_target_"].rsplit(".", 1)[-1]
        raise AistudioError(f"{key}.{unknown[0]}: {name} takes no argument {unknown[0]!r} ({takes}) — "
                            f"remove {key}.{unknown[0]} or choose another {key.split('.')[0]}")


def check_model_name(model: dict[str, Any]) -> None:
    """An unknown ``model.name`` for builders whose module lists its names (``available_models``)."""
    if not isinstance(model, dict) or "_target_" not in model or "name" not in model:
        return
    module = importlib.import_module(model["_target_"].rsplit(".", 1)[0])
    available = getattr(module, "available_models", None)
    if available is None:
        return
    from aistudio.models.names import check_name_and_classes

    check_name_and_classes(str(model["name"]), available(), getattr(module, "MODEL_KIND", "vision"), 1)


def check_config(config: dict[str, Any]) -> None:
    check_model_name(config.get("model") or {})
    check_arguments("optimizer", config.get("optimizer"))
    check_arguments("scheduler.scheduler", (config.get("scheduler") or {}).get("scheduler"))
    check_arguments("trainer", config.get("trainer"))
