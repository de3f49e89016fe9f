"""Resolve ``hardware.selected_devices`` into Lightning's accelerator / devices / strategy / precision.

``selected_devices``: ``cpu``; ``auto`` (every visible GPU, else CPU); a GPU count; or a list of GPU
indices (``[0, 2]``). More than one device (or node) means DDP unless a strategy is named.
"""

from __future__ import annotations

from typing import Any, Literal

from aistudio import AistudioError

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
    visible = _visible_gpus()
    if selected_devices == "auto":
        selected_devices = list(range(visible)) if visible else "cpu"
    if selected_devices in ("cpu", None, []) or selected_devices == 0:
        if str(precision) in _GPU_ONLY_PRECISIONS:
            raise AistudioError(f"hardware.precision={precision} needs a GPU; on CPU use 32-true or bf16-mixed")
        devices: Any = int(cpu_processes)
        accelerator = "cpu"
        count = devices
    else:
        if isinstance(selected_devices, int):
            selected_devices = list(range(selected_devices))
        indices = [int(i) for i in selected_devices]
        if not visible:
            raise AistudioError(f"hardware.selected_devices={indices} asks for GPUs but no CUDA GPU is visible — "
                                "use hardware=cpu or hardware=auto")
        missing = [i for i in indices if i >= visible]
        if missing:
            raise AistudioError(f"hardware.selected_devices={indices}: GPU(s) {missing} do not exist "
                                f"({visible} visible: 0..{visible - 1})")
        accelerator, devices, count = "gpu", indices, len(indices)
    if strategy == "auto" and (count > 1 or int(num_nodes) > 1):
        strategy = "ddp"
    return {"accelerator": accelerator, "devices": devices, "strategy": strategy,
            "num_nodes": int(num_nodes), "precision": str(precision)}
