"""Turn failures into one actionable message: out-of-memory (CUDA or the CPU allocator), data-loader
worker deaths, and config keys a builder passes on to a constructor that does not take them.

Otherwise each ends a run in a long traceback whose first line does not say what to change.
"""

from __future__ import annotations

import re
from typing import Any

from aistudio import AistudioError, exception_chain

_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "outofmemoryerror")
_WORKER_MARKERS = ("exited unexpectedly", "is killed by signal")


def _unexpected_argument(chain: list[BaseException]) -> AistudioError | None:
    """A config key a ``_target_`` does not take (builders that pass ``**kwargs`` on to torchvision)."""
    typo = next((c for c in chain if isinstance(c, TypeError) and "unexpected keyword argument" in str(c)), None)
    if typo is None:
        return None
    targets = re.findall(r"Error in call to target '([^']+)'", " ".join(str(c) for c in chain))
    where = f" (building {targets[-1]})" if targets else ""
    argument = re.search(r"argument '([^']+)'", str(typo))
    name = argument.group(1) if argument else "?"
    return AistudioError(f"{typo}{where} — the config passes {name!r} to something that does not take it: remove it "
                         f"(e.g. ~model.{name} when it was added with +model.{name}=...)")


def explain_failure(error: BaseException, config: dict[str, Any] | None = None) -> AistudioError | None:
    """An :class:`AistudioError` (caused by ``error``) for OOM and worker crashes, else None."""
    data = (config or {}).get("data") or {}
    chain = exception_chain(error)
    typo = _unexpected_argument(chain)
    if typo is not None:
        typo.__cause__ = error
        return typo
    for cause in chain:
        text = f"{type(cause).__name__}: {cause}".lower()
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        if any(marker in text for marker in _OOM_MARKERS) or type(cause).__name__ == "OutOfMemoryError":
            problem = AistudioError(
                f"out of memory ({first[:200]}) — lower data.batch_size (now {data.get('batch_size', '?')}) or "
                f"data.image_size (now {data.get('image_size', '?')}), use a smaller model, or on GPU use "
                "hardware.precision=16-mixed / bf16-mixed")
        elif any(marker in text for marker in _WORKER_MARKERS):
            problem = AistudioError(
                f"a data-loading worker died ({first[:200]}) — usually the workers ran out of memory or a "
                f"decoder crashed; lower data.num_workers (now {data.get('num_workers', '?')}), or run with "
                "data.num_workers=0 to see the underlying error in the main process")
        else:
            continue
        problem.__cause__ = error
        return problem
    return None
