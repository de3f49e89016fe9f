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
    check_types(config)
    check_model_name(config.get("model") or {})
    check_arguments("optimizer", config.get("optimizer"))
    check_arguments("scheduler.scheduler", (config.get("scheduler") or {}).get("scheduler"))
    check_arguments("trainer", config.get("trainer"))


# top-level keys of conf/train.yaml that no _target_ receives
TOP_LEVEL_TYPES: dict[str, Any] = {"seed": int, "exclusive": bool, "heartbeat_s": float, "test": bool}


def check_types(config: dict[str, Any]) -> None:
    """Every value given to a ``_target_`` has the type its parameter declares (and the top-level keys
    theirs), so ``trainer.max_epochs=three`` is one line naming the key before anything runs, instead
    of a traceback from deep inside Lightning after the data was loaded."""
    for key, expected in TOP_LEVEL_TYPES.items():
        if key in config and not _matches(config[key], expected):
            raise _type_error(key, config[key], expected, "")
    for key, node in _target_nodes(config, ""):
        target = _target(node["_target_"], key)
        hints = _parameter_hints(target)
        for name, value in node.items():
            if name in HYDRA_KEYS or name not in hints:
                continue
            if not _matches(value, hints[name]):
                owner = node["_target_"].rsplit(".", 1)[-1]
                raise _type_error(f"{key}.{name}" if key else name, value, hints[name], owner)


def _target_nodes(node: Any, key: str):
    """(dotted key, node) of every mapping with a ``_target_``, outermost first."""
    if isinstance(node, dict):
        if "_target_" in node and isinstance(node["_target_"], str):
            yield key, node
        for name, child in node.items():
            if name not in HYDRA_KEYS:
                yield from _target_nodes(child, f"{key}.{name}" if key else str(name))


def _parameter_hints(target: Any) -> dict[str, Any]:
    """Parameter name -> annotation of a class's ``__init__`` or a function; unresolvable ones are left out."""
    import typing

    function = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - a forward reference that cannot be evaluated: take the plain ones
        hints = {name: value for name, value in getattr(function, "__annotations__", {}).items()
                 if not isinstance(value, str)}
    hints.pop("return", None)
    return hints


def _matches(value: Any, hint: Any) -> bool:
    """Whether a config value (plain YAML data) can be the argument ``hint`` declares. Lenient where a
    config cannot say more: None always passes (many defaults are None without Optional), an
    instantiated node passes, numbers pass as strings, and classes a config cannot hold are not checked."""
    import collections.abc
    import enum
    import os
    import types
    import typing

    if value is None or hint is Any or (isinstance(value, dict) and "_target_" in value):
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args or str(value) in [str(a) for a in args]
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    container = origin or hint
    if container in (list, tuple, set, frozenset):
        return isinstance(value, (list, tuple))
    if container in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        return isinstance(value, dict)
    if container in (collections.abc.Sequence, collections.abc.Iterable, collections.abc.Collection):
        return isinstance(value, (list, tuple, str))
    if not isinstance(value, (str, int, float, bool)) or not inspect.isclass(container):
        return True  # a class a config cannot construct, a callable, a type variable: not checked here
    if isinstance(value, str) and (issubclass(container, os.PathLike) or container.__name__ in ("device", "dtype")
                                   or issubclass(container, enum.Enum)):
        return True  # Hydra passes paths, devices and enum members as their text
    return isinstance(value, container)


def _describe(hint: Any) -> str:
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        literals = [v for a in members if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        parts = [_describe(a) for a in members if typing.get_origin(a) is not typing.Literal]
        if literals:
            parts.append("one of " + ", ".join(dict.fromkeys(repr(v) for v in literals)))
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "text"}
    if hint in names:
        return names[hint]
    container = origin or hint
    if container in (list, tuple, set, frozenset):
        return "a list"
    if container in (dict,):
        return "a mapping"
    return getattr(container, "__name__", str(container))


def _type_error(key: str, value: Any, hint: Any, owner: str) -> AistudioError:
    takes = f"{owner} takes {_describe(hint)}" if owner else f"it must be {_describe(hint)}"
    return AistudioError(f"{key}={value!r}: {takes} — fix {key} on the command line or in conf/")
