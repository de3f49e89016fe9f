"""The one device rule: ``hardware.selected_devices`` -> the concrete set of devices a run uses.

``selected_devices``: ``cpu`` (also null, 0, []); ``auto`` (every visible GPU, else the CPU); a GPU
count ``N`` (the first N visible GPUs); or a list of visible GPU indices (``[0, 2]``). The Trainer
arguments (:mod:`aistudio.training.hardware`), the SLURM launcher's shape (:func:`processes_per_node`,
:func:`gpus_per_node`) and the project lock's key (:attr:`DeviceSet.key`) all come from here, so
``auto`` and its explicit equivalent are the same devices everywhere. Torch-free: the lock is taken
before torch is imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aistudio import AistudioError

CPU_WORDS = ("cpu", None, "null", "None")


@dataclass(frozen=True)
class DeviceRequest:
    """What the config asks for, before looking at the machine: ``cpu``, ``auto`` or explicit ``gpus``."""

    kind: str
    gpus: tuple[int, ...] = ()
    cpu_processes: int = 1


@dataclass(frozen=True)
class DeviceSet:
    """The devices a run trains on: ``accelerator`` cpu|gpu, visible GPU ``indices``, processes per node."""

    accelerator: str
    indices: tuple[int, ...] = ()
    processes: int = 1

    @property
    def key(self) -> str:
        """Names the hardware, not the setting: ``cpu`` (however many processes), or ``gpu:`` with the
        physical GPUs (CUDA_VISIBLE_DEVICES renames them), so equal device sets take equal locks."""
        if self.accelerator == "cpu":
            return "cpu"
        return "gpu:" + ",".join(sorted(physical_gpu(i) for i in self.indices))


def parse_devices(selected: Any, cpu_processes: Any = 1) -> DeviceRequest:
    """Check the setting's shape; a wrong one is one line naming the key and the accepted forms."""
    processes = int(cpu_processes or 1)
    if selected in CPU_WORDS or selected == 0 or (isinstance(selected, Sequence) and not isinstance(selected, str)
                                                  and len(selected) == 0):
        return DeviceRequest("cpu", cpu_processes=processes)
    if selected == "auto":
        return DeviceRequest("auto", cpu_processes=processes)
    if isinstance(selected, int) and not isinstance(selected, bool) and selected > 0:
        return DeviceRequest("gpu", tuple(range(selected)), processes)
    if isinstance(selected, Sequence) and not isinstance(selected, str) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                   for i in selected):
        return DeviceRequest("gpu", tuple(dict.fromkeys(int(i) for i in selected)), processes)
    raise AistudioError(f"hardware.selected_devices={selected!r} — use cpu, auto, a GPU count (2) or a list of "
                        "GPU indices ([0, 2])")


def resolve_devices(selected: Any, cpu_processes: Any = 1, visible: int | None = None) -> DeviceSet:
    """The concrete device set on this machine (``visible``: GPUs this process sees; default: counted)."""
    request = parse_devices(selected, cpu_processes)
    if request.kind == "cpu":
        return DeviceSet("cpu", (), request.cpu_processes)
    visible = visible_gpus() if visible is None else visible
    if request.kind == "auto":
        return DeviceSet("gpu", tuple(range(visible)), visible) if visible else \
            DeviceSet("cpu", (), request.cpu_processes)
    indices = list(request.gpus)
    if not visible:
        raise AistudioError(f"hardware.selected_devices={indices} asks for GPUs but no CUDA GPU is visible — "
                            "use hardware=cpu or hardware=auto")
    missing = [i for i in indices if i >= visible]
    if missing:
        raise AistudioError(f"hardware.selected_devices={indices}: GPU(s) {missing} do not exist "
                            f"({visible} visible: 0..{visible - 1})")
    return DeviceSet("gpu", tuple(indices), len(indices))


def visible_gpus() -> int:
    """CUDA GPUs this process sees: torch's count once torch is loaded, else the driver's GPU list
    narrowed by CUDA_VISIBLE_DEVICES (cheap: the lock key is computed before torch is imported)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        installed = len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        installed = 0
    listed = _cuda_visible_devices()
    return installed if listed is None else min(len(listed), installed)


def physical_gpu(index: int) -> str:
    """The CUDA_VISIBLE_DEVICES entry (a physical index or a UUID) behind visible GPU ``index``."""
    listed = _cuda_visible_devices()
    return listed[index] if listed is not None and index < len(listed) else str(index)


def _cuda_visible_devices() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: entries up to the first invalid one (e.g. -1); None if unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    entries = []
    for entry in (e.strip() for e in value.split(",")):
        if not entry or entry.startswith("-"):
            break
        entries.append(entry)
    return entries


def processes_per_node(selected: Any, cpu_processes: Any = 1) -> int:
    """SLURM tasks per node for one run: its CPU processes or one per GPU asked for. ``auto`` is one task
    (the machine it will land on is not known when the job is submitted)."""
    request = parse_devices(selected, cpu_processes)
    return len(request.gpus) if request.kind == "gpu" else 1 if request.kind == "auto" else request.cpu_processes


def gpus_per_node(selected: Any) -> int | None:
    """GPUs per node to ask SLURM for (None unless GPUs are asked for explicitly)."""
    request = parse_devices(selected)
    return len(request.gpus) if request.kind == "gpu" else None
