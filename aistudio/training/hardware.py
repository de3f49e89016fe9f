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
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision; high: TF32 on Ampere+


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_hardware(selected_devices: Any = "auto", precision: Precision = "32-true", strategy: str = "auto",
                     num_nodes: int = 1, cpu_processes: int = 1, channels_last: bool = False, compile: Any = False,
                     matmul_precision: str = "high") -> dict[str, Any]:
    """Return Trainer keyword arguments, plus ``speed``: the settings applied to the network
    (:class:`aistudio.training.speed.SpeedSettings`); impossible requests fail with what is available."""
    devices = resolve_devices(selected_devices, cpu_processes, visible=_visible_gpus())
    if devices.accelerator == "cpu" and str(precision) in _GPU_ONLY_PRECISIONS:
        raise AistudioError(f"hardware.precision={precision} needs a GPU; on CPU use 32-true or bf16-mixed")
    if str(matmul_precision) not in MATMUL_PRECISIONS:
        raise AistudioError(f"hardware.matmul_precision={matmul_precision}: use one of {', '.join(MATMUL_PRECISIONS)} "
                            "(high: TF32 matmuls on Ampere and later GPUs, highest: full float32)")
    if strategy == "auto" and (devices.processes > 1 or int(num_nodes) > 1):
        strategy = "ddp"
    return {"accelerator": devices.accelerator,
            "devices": devices.processes if devices.accelerator == "cpu" else list(devices.indices),
            "strategy": strategy, "num_nodes": int(num_nodes), "precision": str(precision),
            "speed": {"channels_last": bool(channels_last), "compile": compile_mode(compile),
                      "matmul_precision": str(matmul_precision)}}


def compile_mode(value: Any) -> str | None:
    """``hardware.compile``: false/null (off), true (mode ``default``) or a torch.compile mode."""
    if value in (None, False, "false", "none", "off"):
        return None
    if value is True or value == "true":
        return "default"
    if str(value) not in COMPILE_MODES:
        raise AistudioError(f"hardware.compile={value}: use false, true or a torch.compile mode "
                            f"({', '.join(COMPILE_MODES)})")
    return str(value)
