"""A full disk during a checkpoint write: the run stops at once with one message that names the disk,
no temp file is left, and run.json's ``best`` names only an epoch whose best.ckpt was written.

The end-to-end test fills a real (small) tmpfs, which needs root; the in-process tests fake the
failure the way torch reports it (its enforce-fail RuntimeError raised from the OSError ENOSPC).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from aistudio.runs.failures import explain_failure
from aistudio.runs.record import RunRecord, load_run
from aistudio.training.callbacks import RunDirectoryCallback
from aistudio.training.checkpoint import AtomicCheckpointIO, BestAndLastCheckpoint, CheckpointWriteError
from tests.helpers import FAST_TRAIN, make_color_project, run_train
from tests.test_module import SGD, datamodule

SMALL_MODEL = {"_target_": "aistudio.models.classification.build_classifier", "name": "mobilenet_v3_small",
               "num_classes": 3}


def leftover_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.tmp") if p.is_file()]


def torch_disk_full_error() -> RuntimeError:
    """What ``torch.save`` into a file object raises on a full disk."""
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # noqa: B904
    except RuntimeError as err:
        return err


class SettleWrites(Callback):
    """Wait for the background writer before each training step, so that a write that fails is known to have
    failed before the next step (the real writer races with training)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        trainer.strategy.checkpoint_io.wait()


# True: whole writes in the background thread; "auto" on this CPU machine: written in line, fsync + rename
# behind (commit_behind); False: everything in line
@pytest.mark.parametrize("background", [True, "auto", False])
def test_failed_write_stops_before_the_next_step_and_best_stays_on_disk(tmp_path, color_project, monkeypatch,
                                                                         background):
    from aistudio.tasks.classification import ClassificationModule

    real_save = torch.save

    def save(checkpoint, handle, *args, **kwargs):  # the disk fills up during epoch 1's checkpoint
        if isinstance(checkpoint, dict) and checkpoint.get("epoch", 0) >= 1:
            handle.write(b"\0" * 4096)
            raise torch_disk_full_error()
        return real_save(checkpoint, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    steps: list[int] = []

    class Counting(ClassificationModule):
        def training_step(self, batch, batch_idx):
            steps.append(self.current_epoch)
            return super().training_step(batch, batch_idx)

    run_dir = tmp_path / "run"
    record = RunRecord.create(run_dir)
    # "step" only grows: every epoch is a new best, so epoch 1's failed write is a best.ckpt write
    run_callback = RunDirectoryCallback(run_dir, record, monitor="step", mode="max")
    checkpoint = BestAndLastCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="step", mode="max",
                                       save_last=True, enable_version_counter=False)
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[SettleWrites(), run_callback, checkpoint],
                         plugins=[AtomicCheckpointIO(background=background)])
    with pytest.raises(CheckpointWriteError) as failure:
        trainer.fit(Counting(SMALL_MODEL, SGD), datamodule=datamodule(color_project))

    assert max(steps) == 1, "a training step ran after the failed write"
    assert [e["epoch"] for e in json.loads((run_dir / "metrics.json").read_text())] == [0, 1]
    monkeypatch.setattr(torch, "save", real_save)
    best = run_dir / "checkpoints" / "best.ckpt"
    assert torch.load(best, weights_only=False)["epoch"] == 0
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0
    assert load_run(run_dir)["best"]["epoch"] == 0 and load_run(run_dir)["best"]["value"] == steps.count(0)
    assert leftover_temp_files(run_dir) == []

    message = str(explain_failure(failure.value))
    assert message.startswith(f"no space left on device writing {best} (about ")
    assert "MB needed" in message and " free on " in message and "paths.runs_root" in message


def test_a_full_disk_without_a_file_name_names_the_run_directory(tmp_path, monkeypatch):
    from aistudio.runs import failures

    # torch.save into an open file (or a write to metrics.json) names no file: the run directory's disk it is
    (tmp_path / "run.json").write_text("{}")
    monkeypatch.setattr(failures, "_hydra_run_dir", lambda: tmp_path)
    message = str(explain_failure(torch_disk_full_error()))
    assert message.startswith(f"no space left on device writing into {tmp_path} (") and " free on " in message
    assert "paths.runs_root" in message and "enforce fail" not in message
    monkeypatch.setattr(failures, "_hydra_run_dir", lambda: None)  # outside a Hydra job: still one clear line
    message = str(explain_failure(torch_disk_full_error()))
    assert message.startswith("no space left on device") and "paths.runs_root" in message

    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT), str(tmp_path / "metrics.json"))
    assert str(explain_failure(quota)).startswith(f"disk quota exceeded writing {tmp_path / 'metrics.json'} (")
    assert explain_failure(OSError(errno.EACCES, "Permission denied")) is None


def test_link_copy_cut_short_leaves_no_temp_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO(background=True)
    io.save_checkpoint({"epoch": 0, "w": torch.zeros(10)}, tmp_path / "best.ckpt")

    def no_link(*args):
        raise OSError(errno.EXDEV, "cross-device link")

    def copy_fills_disk(source, target):
        Path(target).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "link", no_link)  # another file system: replace_with_link copies instead
    monkeypatch.setattr(shutil, "copyfile", copy_fills_disk)
    io.link(tmp_path / "best.ckpt", tmp_path / "last.ckpt")
    io.wait()
    assert io.failed
    with pytest.raises(CheckpointWriteError, match="last.ckpt"):
        io.save_checkpoint({"epoch": 1}, tmp_path / "best.ckpt")  # every later write raises it too
    io.teardown()  # already raised in the training thread: not again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt"]
    assert torch.load(tmp_path / "best.ckpt", weights_only=False)["epoch"] == 0


# ---------------------------------------------------------------------------------------------------------------
# end to end: python train.py with its run directory on a small tmpfs


def checkpoint_bytes(model: str) -> int:
    """A checkpoint's size: the weights and SGD's momentum buffers (one more copy), plus a little."""
    import torchvision

    weights = getattr(torchvision.models, model)(num_classes=3).state_dict()
    return 2 * sum(t.numel() * t.element_size() for t in weights.values()) + 200_000


def mount_tmpfs(where: Path, size_bytes: int) -> None:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8); this test fills a small real disk")
    where.mkdir(parents=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes // 1024}k", "tmpfs", str(where)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?): {result.stderr.strip()}")


@pytest.mark.slow
@pytest.mark.parametrize("background", [True, "auto", False])
def test_disk_full_during_checkpoint_write_fails_the_run_at_once(tmp_path, background):
    project = make_color_project(tmp_path / "colors")
    size = checkpoint_bytes("mobilenet_v3_small")
    disk = tmp_path / "small_disk"
    mount_tmpfs(disk, size * 3 // 2)  # best.ckpt of epoch 0 fits; epoch 1's, written beside it, does not
    try:
        run_dir = disk / "run"
        fast = [a for a in FAST_TRAIN if not a.startswith("model=")]
        args = ["data=project", f"data.project={project}", *fast, "model=mobilenet_v3_small",
                "trainer.max_epochs=4", "task.monitor=step", "task.mode=max",  # every epoch writes a new best
                "callbacks.early_stopping=null", f"checkpoint_io.background={str(background).lower()}",
                f"hydra.run.dir={run_dir}"]
        result = run_train(args, tmp_path, timeout=300)
        assert result.returncode == 1, result.stderr[-3000:]
        record = load_run(run_dir)
        assert record["status"] == "failed", record.get("error")
        message = record["error"]["message"]
        assert "no space" in message.lower() and str(disk) in message, message
        assert "enforce fail" not in message
        assert message in result.stderr

        epochs = [m["epoch"] for m in json.loads((run_dir / "metrics.json").read_text())]
        if background is True:  # the write runs beside training, at low priority: its failure is raised at the first
            # training step after it (the in-process test above checks that step exactly); on this tiny set an
            # epoch (3 steps) can be shorter than the write
            assert epochs[:2] == [0, 1], epochs
        else:
            assert epochs == [0, 1], f"trained on after epoch 1's failed checkpoint write: {epochs}"
        best = run_dir / "checkpoints" / "best.ckpt"
        assert best.is_file(), "epoch 0's checkpoint should fit: is the tmpfs sized right?"
        assert record["best"]["epoch"] == torch.load(best, map_location="cpu", weights_only=False)["epoch"] == 0
        assert leftover_temp_files(disk) == []
    finally:
        if os.path.ismount(disk):
            subprocess.run(["umount", str(disk)], check=False)
