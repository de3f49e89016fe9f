"""Turn resource failures that are not the user's typo into one actionable message.

Out-of-memory (CUDA or the CPU allocator) and data-loader worker deaths otherwise end a run in a
long traceback whose first line does not say what to change.
"""

from __future__ import annotations

from typing import Any

from aistudio import AistudioError

_OOM_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory", "outofmemoryerror")
_WORKER_MARKERS = ("exited unexpectedly", "is killed by signal")


def _chain(error: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and all(error is not e for e in seen):
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def explain_failure(error: BaseException, config: dict[str, Any] | None = None) -> AistudioError | None:
    """An :class:`AistudioError` (caused by ``error``) for OOM and worker crashes, else None."""
    data = (config or {}).get("data") or {}
    for cause in _chain(error):
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
