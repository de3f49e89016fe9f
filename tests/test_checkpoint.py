"""best.ckpt / last.ckpt semantics and crash-safe checkpoint writes."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch

from aistudio import AistudioError
from aistudio.training.checkpoint import AtomicCheckpointIO, BestAndLastCheckpoint, replace_with_link
from tests.test_module import MODEL, SGD, datamodule


def test_atomic_write_leaves_no_temp_and_link_survives_rewrite(tmp_path):
    io = AtomicCheckpointIO()
    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1}, best)
    replace_with_link(best, last)
    assert best.stat().st_ino == last.stat().st_ino
    io.save_checkpoint({"epoch": 2}, best)  # a new best must not rewrite the linked last.ckpt
    assert torch.load(last)["epoch"] == 1 and torch.load(best)["epoch"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_commit_behind_writes_in_line_and_renames_after_the_fsync_in_order_with_links(tmp_path, monkeypatch):
    import os
    import threading

    io = AtomicCheckpointIO(background="auto").for_accelerator("cpu")
    assert io.mode == "commit_behind" and not io.background
    caller, synced = threading.get_ident(), []
    real_save, real_fsync = torch.save, os.fsync
    release = threading.Event()

    def save(checkpoint, handle, *args, **kwargs):
        assert threading.get_ident() == caller  # the serialising stays on the training thread
        return real_save(checkpoint, handle, *args, **kwargs)

    def slow_fsync(fd):  # a disk that takes its time: the caller must not wait for it
        assert threading.get_ident() != caller
        release.wait(10)
        synced.append(fd)
        return real_fsync(fd)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(os, "fsync", slow_fsync)
    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 3, "w": torch.ones(4)}, best)
    io.link(best, last)
    assert not best.exists() and not last.exists() and not synced  # returned before the fsync and rename
    release.set()
    io.teardown()
    assert synced and torch.load(best)["epoch"] == 3 and best.stat().st_ino == last.stat().st_ino
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_commit_behind_failure_keeps_the_old_file_and_stops_the_next_write(tmp_path, monkeypatch):
    import errno
    import os

    from aistudio.training.checkpoint import CheckpointWriteError

    io = AtomicCheckpointIO(background="auto").for_accelerator("cpu")
    last = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1}, last)
    io.wait()

    def failing_fsync(fd):  # delayed allocation: a full disk can first show at the fsync
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", failing_fsync)
    io.save_checkpoint({"epoch": 2}, last)
    io.wait()
    assert io.failed
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        io.save_checkpoint({"epoch": 3}, last)  # raised before anything more is written
    assert torch.load(last)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    io.teardown()  # already raised to the caller: not again


@pytest.mark.parametrize(("save_on_tie", "best_epoch"), [(True, 3), (False, 1)])
def test_last_is_the_final_epoch_even_when_best_is_earlier(tmp_path, color_project, save_on_tie, best_epoch):
    from aistudio.tasks.classification import ClassificationModule

    scores = [0.5, 0.9, 0.4, 0.9, 0.3]  # a tie at epoch 3: the later epoch becomes best

    class Scripted(ClassificationModule):
        def on_validation_epoch_end(self):
            self.log("score", scores[self.current_epoch])

    out = tmp_path / "checkpoints"
    checkpoint = BestAndLastCheckpoint(dirpath=out, filename="best", monitor="score", mode="max",
                                       save_last=True, enable_version_counter=False, save_on_tie=save_on_tie)
    trainer = pl.Trainer(max_epochs=5, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, callbacks=[checkpoint],
                         plugins=[AtomicCheckpointIO()])
    trainer.fit(Scripted(MODEL, SGD), datamodule=datamodule(color_project))
    assert torch.load(out / "best.ckpt", weights_only=False)["epoch"] == best_epoch
    assert torch.load(out / "last.ckpt", weights_only=False)["epoch"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_background_writes_snapshot_into_reused_host_buffers(tmp_path, monkeypatch):
    """Training changes the tensors in place right after save_checkpoint returns: each file holds the values
    of its own save, also while every buffer set is still being written; the buffers are reused."""
    import time

    slow_write = AtomicCheckpointIO._write

    def write_slowly(self, checkpoint, path, size=None):
        time.sleep(0.2)  # a slow disk: the next saves find their buffer sets busy
        slow_write(self, checkpoint, path, size)

    monkeypatch.setattr(AtomicCheckpointIO, "_write", write_slowly)
    io = AtomicCheckpointIO(background=True)
    weight = torch.zeros(4, 3, 5, 5).to(memory_format=torch.channels_last)
    state = {"state_dict": {"w": weight, "b": torch.zeros(4)}, "optimizer_states": [{"momentum": [torch.zeros(7)]}],
             "epoch": 0}
    for epoch in range(5):
        io.save_checkpoint({**state, "epoch": epoch}, tmp_path / f"epoch{epoch}.ckpt")
        for tensor in (weight, state["state_dict"]["b"], state["optimizer_states"][0]["momentum"][0]):
            tensor.add_(1.0)  # the next optimizer step, in place
    io.wait()
    assert io._staging._count <= 2  # at most one set being written and one being filled
    for epoch in range(5):
        saved = torch.load(tmp_path / f"epoch{epoch}.ckpt", weights_only=False)
        assert saved["epoch"] == epoch
        assert torch.equal(saved["state_dict"]["w"], torch.full((4, 3, 5, 5), float(epoch)))
        assert torch.equal(saved["optimizer_states"][0]["momentum"][0], torch.full((7,), float(epoch)))
        assert saved["state_dict"]["w"].is_contiguous(memory_format=torch.channels_last)  # strides kept
    io.teardown()
    assert io._staging._count == 0  # the buffers go with the stage


def test_background_staging_follows_a_new_layout(tmp_path):
    io = AtomicCheckpointIO(background=True)
    for shape in ((3,), (3,), (5, 2), (5, 2), (4,)):
        io.save_checkpoint({"w": torch.ones(shape)}, tmp_path / "last.ckpt")
        io.wait()
        assert torch.equal(torch.load(tmp_path / "last.ckpt", weights_only=False)["w"], torch.ones(shape))
        assert io._staging._count <= 2
    io.teardown()


@pytest.mark.parametrize("minutes", [-1, float("nan")])
def test_last_every_minutes_must_be_a_number_of_minutes(minutes):
    with pytest.raises(AistudioError, match=r"last_every_minutes=.* use a number of minutes >= 0, or null"):
        BestAndLastCheckpoint(monitor="val_acc", mode="max", save_last=True, last_every_minutes=minutes)
    assert BestAndLastCheckpoint(last_every_minutes=0).last_every_minutes == 0.0
    assert BestAndLastCheckpoint().last_every_minutes is None


@pytest.mark.parametrize("background", [False, True])
def test_checkpoints_skip_the_zip_crc32_unless_asked_and_load_the_same(tmp_path, background):
    """crc32=False (the default) writes zero CRCs, which torch.load never checks; crc32=True writes real ones
    (``unzip -t`` passes). The same tensors load from both, and torch's own setting is left as it was."""
    import zipfile

    from torch.utils.serialization import config

    state = {"state_dict": {"w": torch.randn(64, 3, 3, 3)}, "optimizer_states": [{"momentum": [torch.randn(50)]}]}
    before = config.save.compute_crc32
    for crc32 in (False, True):
        io = AtomicCheckpointIO(background=background, crc32=crc32)
        path = tmp_path / f"crc32-{crc32}.ckpt"
        io.save_checkpoint(state, path)
        io.teardown()
        loaded = torch.load(path, weights_only=False)
        assert torch.equal(loaded["state_dict"]["w"], state["state_dict"]["w"])
        assert torch.equal(loaded["optimizer_states"][0]["momentum"][0], state["optimizer_states"][0]["momentum"][0])
        records = zipfile.ZipFile(path).infolist()
        assert all((info.CRC != 0) == crc32 for info in records if info.file_size > 0), \
            [(info.filename, info.CRC) for info in records]
        assert (zipfile.ZipFile(path).testzip() is None) == crc32  # a zip tool's check passes only with CRCs
    assert config.save.compute_crc32 == before


# ---------------------------------------------------------------------------------------------------------------
# a replaced checkpoint is rewritten by the next write (aistudio/training/checkpoint_spare.py)


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def rewrites(monkeypatch):
    """How many checkpoint writes went into a recycled file (write_temp's ``reuse``) and how many into a new one."""
    from aistudio.training import checkpoint

    counts = {"recycled": 0, "new": 0}
    real_write_temp = checkpoint.write_temp

    def counting_write_temp(path, write, mode="w", reuse=None):
        counts["new" if reuse is None else "recycled"] += 1
        return real_write_temp(path, write, mode, reuse)

    monkeypatch.setattr(checkpoint, "write_temp", counting_write_temp)
    return counts


def test_a_replaced_checkpoint_is_rewritten_by_the_next_write_and_removed_at_teardown(tmp_path):
    from aistudio.runs.atomic import remove_stale_temp_files
    from aistudio.training.checkpoint_spare import SPARE_NAME

    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "w": torch.ones(50_000)}, last)
    first = last.stat().st_ino
    io.save_checkpoint({"epoch": 1, "w": torch.ones(50_000)}, last)
    assert _files(tmp_path) == [SPARE_NAME, "last.ckpt"] and (tmp_path / SPARE_NAME).stat().st_ino == first
    io.save_checkpoint({"epoch": 2, "w": torch.full((10,), 2.0)}, last)  # smaller: the rewritten file is cut
    assert last.stat().st_ino == first and last.stat().st_size < 10_000
    saved = torch.load(last, weights_only=False)
    assert saved["epoch"] == 2 and torch.equal(saved["w"], torch.full((10,), 2.0))
    assert remove_stale_temp_files(tmp_path) == [tmp_path / SPARE_NAME]  # what a killed run leaves is stale
    io.save_checkpoint({"epoch": 3}, last)
    io.teardown()
    assert _files(tmp_path) == ["last.ckpt"] and torch.load(last, weights_only=False)["epoch"] == 3


READER = """
import hashlib, sys
handle = open(sys.argv[1], "rb")
print("open", flush=True)
sys.stdin.readline()
print(hashlib.sha256(handle.read()).hexdigest(), flush=True)
"""


@pytest.mark.parametrize("reader", ["open file", "memory map", "another process"])
def test_a_replaced_checkpoint_still_being_read_is_never_rewritten(tmp_path, reader, rewrites):
    """Whoever opened the old last.ckpt (an evaluation of a running run, a copy, torch.load(mmap=True)) reads
    the old checkpoint to its end, however many checkpoints are written meanwhile."""
    import hashlib
    import mmap
    import subprocess
    import sys

    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "w": torch.zeros(50_000)}, last)
    expected = hashlib.sha256(last.read_bytes()).hexdigest()
    handle = open(last, "rb")  # noqa: SIM115 - held open across the writes below
    child = None
    if reader == "memory map":
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        handle.close()
    elif reader == "another process":
        handle.close()
        child = subprocess.Popen([sys.executable, "-c", READER, str(last)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "open"
    first = last.stat().st_ino
    for epoch in range(1, 4):
        io.save_checkpoint({"epoch": epoch, "w": torch.full((50_000,), float(epoch))}, last)
        assert last.stat().st_ino != first
    assert rewrites["recycled"] == 1  # epoch 3 rewrote epoch 1's file, which nobody had open
    if reader == "open file":
        assert hashlib.sha256(handle.read()).hexdigest() == expected
        handle.close()
    elif reader == "memory map":
        assert hashlib.sha256(mapped[:]).hexdigest() == expected
        mapped.close()
    else:
        out, _ = child.communicate("read\n", timeout=30)
        assert out.strip() == expected
    assert torch.load(last, weights_only=False)["epoch"] == 3
    io.teardown()
    assert _files(tmp_path) == ["last.ckpt"]


@pytest.mark.parametrize("mode", ["in_line", "commit_behind", "background"])
def test_best_and_last_stay_right_through_any_order_of_writes_and_links(tmp_path, mode, rewrites):
    """Writes of best and last and links of last to best, in a random order: every file always holds what was
    last written to it (a spare is never a file that a name still holds), in every write mode."""
    import random

    io = AtomicCheckpointIO(background={"in_line": False, "commit_behind": "auto", "background": True}[mode])
    io.for_accelerator("cpu")
    assert io.mode == mode
    folder = tmp_path
    expected: dict[str, int] = {}
    rng = random.Random(14)
    for step in range(60):
        action = rng.choice(["best", "last", "link"] if "best" in expected else ["best"])
        if action == "link":
            io.link(folder / "best.ckpt", folder / "last.ckpt")
            expected["last"] = expected["best"]
        else:
            io.save_checkpoint({"step": step, "w": torch.full((20_000,), float(step))}, folder / f"{action}.ckpt")
            expected[action] = step
        io.wait()
        for name, value in expected.items():
            saved = torch.load(folder / f"{name}.ckpt", weights_only=False)
            assert saved["step"] == value and torch.equal(saved["w"], torch.full((20_000,), float(value))), \
                (step, action, name)
    assert rewrites["recycled"] >= 10 and rewrites["new"] >= 5  # spares were taken, and none at times
    io.teardown()
    assert _files(folder) == ["best.ckpt", "last.ckpt"]


def test_without_write_leases_every_write_gets_a_new_file(tmp_path, monkeypatch, rewrites):
    """Where Linux cannot tell whether someone reads a file (NFS, other systems), nothing is rewritten."""
    import errno
    import fcntl

    def no_leases(fd, command, *args):
        if command == fcntl.F_SETLEASE:
            raise OSError(errno.EINVAL, "leases not supported")
        return real_fcntl(fd, command, *args)

    real_fcntl = fcntl.fcntl
    monkeypatch.setattr(fcntl, "fcntl", no_leases)
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    for epoch in range(4):
        io.save_checkpoint({"epoch": epoch}, last)
        assert torch.load(last, weights_only=False)["epoch"] == epoch
    assert rewrites == {"recycled": 0, "new": 4}
    io.teardown()
    assert _files(tmp_path) == ["last.ckpt"]
