"""Why another DDP rank failed, for rank 0's record.

When rank 1 fails (a corrupt image in its shard, its own out-of-memory), rank 0 only sees the socket to it
close: gloo's "Connection closed by peer ... This is typically caused by a remote worker crashing", which
names neither the rank nor the cause. Every rank > 0 therefore leaves its failure in the run's ``logs/``
before it exits; rank 0 (which waits for the ranks it started before it records its own end) reports that
failure instead of the lost connection.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aistudio import exception_chain, user_error
from aistudio.runs.atomic import atomic_write_json

RANK_ERROR = "rank{rank}-error.json"  # in the run's logs/
_LOST_PEER_MARKERS = ("connection closed by peer", "connection reset by peer", "broken pipe")
_DISTRIBUTED_ERRORS = ("DistError", "DistBackendError", "DistNetworkError", "DistStoreError")


def record_rank_error(run_dir: Path, rank: int, error: BaseException) -> None:
    """Leave ``error`` (this rank's failure) for rank 0; never raises (the rank is failing already)."""
    own = user_error(error)
    message = str(own) if own is not None else f"{type(error).__name__}: {str(error).strip()[:500]}"
    try:
        atomic_write_json(run_dir / "logs" / RANK_ERROR.format(rank=rank),
                          {"rank": rank, "message": message, "lost_peer": lost_peer(error)})
    except OSError:
        pass


def clear_rank_errors(run_dir: Path) -> None:
    """Remove the files of an earlier attempt in the same run directory (a resumed run)."""
    for path in _rank_error_files(run_dir):
        path.unlink(missing_ok=True)


def other_rank_failure(run_dir: Path) -> dict[str, Any] | None:
    """The first rank's own failure (not itself a lost connection), if any rank left one."""
    found = []
    for path in _rank_error_files(run_dir):
        try:
            entry = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict) and not entry.get("lost_peer"):
            found.append(entry)
    return min(found, key=lambda entry: int(entry.get("rank", 0)), default=None)


def _rank_error_files(run_dir: Path) -> list[Path]:
    return list((run_dir / "logs").glob(RANK_ERROR.format(rank="*")))


def lost_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective that failed because another process went away."""
    for cause in exception_chain(error):
        if type(cause).__name__ in _DISTRIBUTED_ERRORS:
            return True
        text = str(cause).lower()
        if "gloo" in text or "nccl" in text or "c10d" in text:
            if any(marker in text for marker in _LOST_PEER_MARKERS):
                return True
    return False
