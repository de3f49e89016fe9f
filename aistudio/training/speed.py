"""Speed settings of ``hardware`` that are not Trainer arguments: channels-last memory format,
``torch.compile`` of the network, and the float32 precision of matmuls and cuDNN convolutions (TF32 on
Ampere and later GPUs).

They are applied by a callback when a stage starts, to the task's network (``module.model``) only, so
the checkpoint's keys stay those of the plain model (``nn.Module.compile`` compiles in place, unlike
``torch.compile(module)`` which wraps it) and eval.py, predict.py and export.py load it unchanged.
What was applied is recorded (``applied``) for run.json.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch

log = logging.getLogger(__name__)

class SpeedSettings(pl.Callback):
    """Applies ``hardware.channels_last`` / ``compile`` / ``matmul_precision`` when a stage starts."""

    def __init__(self, channels_last: bool = False, compile: str | None = None, matmul_precision: str = "high"):
        self.channels_last = bool(channels_last)
        self.compile = compile  # a torch.compile mode, or None (checked by resolve_hardware)
        self.matmul_precision = str(matmul_precision)
        self.applied: dict[str, Any] = {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        cpus = _threads_within_quota(trainer.num_devices)
        torch.set_float32_matmul_precision(self.matmul_precision)
        # PyTorch leaves cuDNN's float32 convolutions on TF32 whatever the matmul precision: "highest" means
        # full float32 for both (what an fp32 baseline must be measured with), the others keep TF32
        torch.backends.cudnn.allow_tf32 = self.matmul_precision != "highest"
        network = getattr(pl_module, "model", None)
        if not isinstance(network, torch.nn.Module):
            return
        if self.channels_last:  # 4-D weights NHWC; inputs follow from the first convolution on
            network.to(memory_format=torch.channels_last)
        if self.compile and stage == "fit" and not getattr(network, "_compiled_call_impl", None):
            network.compile(mode=self.compile)  # in place: the state_dict keys do not change
        channels_last = self.channels_last and _is_channels_last(network)
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "channels_last_batches"):
            datamodule.channels_last_batches = channels_last  # normalised batches in the network's layout
        self.applied = {"channels_last": channels_last,
                        "compile": self.compile, "matmul_precision": torch.get_float32_matmul_precision(),
                        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
                        "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
                        # the datamodule's setup ran before this hook: whether batches leave the loaders as uint8
                        "normalize_on_device": getattr(datamodule, "pixel_scaling", None) is not None,
                        "cpus": cpus}
        log.debug("speed settings: %s", self.applied)

    def report(self, trainer: pl.Trainer) -> dict[str, Any]:
        """What was applied, and whether the training loader's workers reuse their batch memory (known once
        the loaders exist: from ``on_train_start`` on)."""
        from aistudio.data.batch_ring import BatchRing

        loader = trainer.train_dataloader
        collate = getattr(loader, "collate_fn", None)
        return {**self.applied, "reuse_batch_memory": isinstance(collate, BatchRing),
                "num_workers": getattr(loader, "num_workers", None)} if self.applied else {}


def _threads_within_quota(processes: int) -> dict[str, Any]:
    """Lower torch's thread count to this process's share of a container's CPU quota (torch counts the
    host's cores: :mod:`aistudio.cpus`); never raises it. What it found and left, for run.json."""
    from aistudio.cpus import cpu_budget

    budget = cpu_budget()
    if budget.limited_by_quota:
        share = max(1, budget.cpus // max(1, processes))
        if torch.get_num_threads() > share:
            log.info("CPU quota: %g CPU(s) of the %d cores this process sees (cgroup): %d torch thread(s)",
                     budget.quota, budget.affinity, share)
            torch.set_num_threads(share)
    return {**budget.as_record(), "torch_threads": torch.get_num_threads()}


def _is_channels_last(network: torch.nn.Module) -> bool:
    """Whether the network's 4-D weights are in channels-last layout (the effect checked, not the flag)."""
    weights = [p for p in network.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1]
    return bool(weights) and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights)
