"""``hardware`` -> Lightning's accelerator / devices / strategy / precision.

Which devices: :func:`aistudio.devices.resolve_devices` (the one device rule). More than one device
(or node) means DDP unless a strategy is named.
"""

from __future__ import annotations

from typing import Any, Literal

from aistudio import AistudioError
from aistudio.devices import resolve_devices

# Lightning's precision settings (numbers as YAML gives them too), so a typo is caught with the config
Precision = Literal["32-true", "32", 32, "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true", "64", 64,
                    "16", 16, "bf16", "transformer-engine", "transformer-engine-float16"]

_GPU_ONLY_PRECISIONS = {"16-mixed", "16", "16-true", "transformer-engine"}


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_hardware(selected_devices: Any = "auto", precision: Precision = "32-true", strategy: str = "auto",
                     num_nodes: int = 1, cpu_processes: int = 1) -> dict[str, Any]:
    """Return Trainer keyword arguments; impossible requests fail with what is available."""
    devices = resolve_devices(selected_devices, cpu_processes, visible=_visible_gpus())
    if devices.accelerator == "cpu" and str(precision) in _GPU_ONLY_PRECISIONS:
        raise AistudioError(f"hardware.precision={precision} needs a GPU; on CPU use 32-true or bf16-mixed")
    if strategy == "auto" and (devices.processes > 1 or int(num_nodes) > 1):
        strategy = "ddp"
    return {"accelerator": devices.accelerator,
            "devices": devices.processes if devices.accelerator == "cpu" else list(devices.indices),
            "strategy": strategy, "num_nodes": int(num_nodes), "precision": str(precision)}
