"""The pieces behind resume and failure reports, on real objects: sampler, RPN anchors, failure
messages from real out-of-memory and worker-death errors, the project lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from aistudio import AistudioError
from aistudio.data.sampling import EpochShuffleSampler, EvalShardSampler
from aistudio.runs.failures import explain_failure
from aistudio.runs.lock import RunLock


class Sized(Dataset):
    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key):
        return key


def keys(sampler: EpochShuffleSampler, epoch: int) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_training_order_and_augmentation_seeds_depend_on_seed_and_epoch_only():
    data = Sized(50)
    first, again = EpochShuffleSampler(data, seed=3), EpochShuffleSampler(data, seed=3)
    assert keys(first, 0) == keys(again, 0)
    assert sorted(i for i, _ in keys(first, 0)) == list(range(50))  # every sample once per epoch
    assert keys(first, 0) != keys(first, 1)  # a new order and new augmentations each epoch
    assert keys(first, 0) != keys(EpochShuffleSampler(data, seed=4), 0)
    # a resume inside an epoch skips exactly what was done
    full = keys(first, 2)
    first.skip_next(16)
    assert keys(first, 2) == full[16:]
    assert keys(first, 2) == full  # only the next pass
    # with batches, the pipeline is re-seeded at each batch's first sample only
    batched = EpochShuffleSampler(data, seed=3, batch_size=8)
    seeds = [seed for _, seed in keys(batched, 0)]
    assert all((seed is not None) == (position % 8 == 0) for position, seed in enumerate(seeds))


def test_ranks_take_disjoint_shards_of_the_same_permutation():
    data = Sized(10)
    shards = []
    for rank in range(3):
        sampler = EpochShuffleSampler(data, seed=0)
        sampler.num_replicas, sampler.rank = 3, rank
        sampler.num_samples = -(-len(data) // 3)
        sampler.total_size = sampler.num_samples * 3
        shards.append([i for i, _ in keys(sampler, 5)])
    assert all(len(s) == 4 for s in shards)  # padded to equal length, as DistributedSampler does
    assert set().union(*map(set, shards)) == set(range(10))


@pytest.mark.parametrize("size", [7, 8, 3])
def test_evaluation_shards_score_every_image_exactly_once_over_the_ranks(size):
    shards = [list(EvalShardSampler(Sized(size), num_replicas=3, rank=rank)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(size))  # no image twice, none left out
    assert [len(shard) for shard in shards] == [len(EvalShardSampler(Sized(size), 3, r)) for r in range(3)]
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shards[0] == list(range(0, size, 3))  # in order: rank r takes images r, r + 3, ...


def test_an_evaluation_split_smaller_than_the_world_still_gives_every_rank_an_image():
    # DDP syncs buffers on the first evaluation forward: a rank without a batch would leave the others waiting
    shards = [list(EvalShardSampler(Sized(2), num_replicas=3, rank=rank)) for rank in range(3)]
    assert all(len(shard) == 1 for shard in shards) and {i for s in shards for i in s} == {0, 1}


def test_rpn_anchors_follow_the_config_and_the_model_still_trains():
    from aistudio.models.detection import build_detector

    model = build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", 3, min_size=96, max_size=96,
                           anchor_sizes=[8, 16, 32], aspect_ratios=[1.0])
    assert model.rpn.anchor_generator.sizes == ((8, 16, 32),) * 3
    assert model.rpn.head.cls_logits.out_channels == 3  # 3 sizes x 1 ratio per location
    model.train()
    losses = model([torch.rand(3, 96, 96)], [{"boxes": torch.tensor([[10.0, 10, 30, 30]]),
                                              "labels": torch.tensor([1])}])
    sum(losses.values()).backward()
    with pytest.raises(AistudioError, match="no region proposal network"):
        build_detector("ssdlite320_mobilenet_v3_large", 3, anchor_sizes=[8, 16])
    with pytest.raises(AistudioError, match="one list per feature map"):
        build_detector("fasterrcnn_mobilenet_v3_large_320_fpn", 3, anchor_sizes=[[8], [16]])


def test_a_real_out_of_memory_error_says_what_to_change():
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**55, dtype=torch.uint8)  # 32 PiB: the CPU allocator refuses
    problem = explain_failure(caught.value, {"data": {"batch_size": 64, "image_size": 224}})
    assert problem is not None and problem.__cause__ is caught.value
    assert "out of memory" in str(problem) and "data.batch_size (now 64)" in str(problem)


class DiesInWorker(Sized):
    def __getitem__(self, key):
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_data_loader_worker_says_what_to_change():
    loader = DataLoader(DiesInWorker(4), num_workers=1)
    with pytest.raises(RuntimeError) as caught:
        next(iter(loader))
    problem = explain_failure(caught.value, {"data": {"num_workers": 1}})
    assert problem is not None and "data-loading worker died" in str(problem)
    assert "data.num_workers=0" in str(problem)
    assert explain_failure(ValueError("an ordinary bug")) is None


class BusErrorInWorker(Sized):
    def __getitem__(self, key):
        os.kill(os.getpid(), signal.SIGBUS)  # what touching a page of a full /dev/shm does


def test_a_worker_killed_by_a_bus_error_is_told_as_shared_memory_too_small():
    loader = DataLoader(BusErrorInWorker(4), num_workers=1)
    with pytest.raises(RuntimeError) as caught:
        next(iter(loader))
    problem = explain_failure(caught.value, {"data": {"num_workers": 1, "prefetch_factor": 2, "batch_size": 4}})
    assert problem is not None and "ran out of shared memory (/dev/shm is " in str(problem), problem
    for fix in ("data.num_workers (now 1)", "data.prefetch_factor (now 2)", "data.batch_size (now 4)", "--shm-size"):
        assert fix in str(problem)


def test_the_lock_is_exclusive_names_its_holder_and_dies_with_its_process(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    first = RunLock(str(project), "cpu", tmp_path / "locks")
    first.acquire(tmp_path / "runs" / "a", "run-a")
    with pytest.raises(AistudioError, match=r"(?s)another training run is active.*runs/a.*run-a"):
        RunLock(str(project / "dataset.json"), "cpu", tmp_path / "locks").acquire(tmp_path / "runs" / "b", "b")
    RunLock(str(project), "gpu", tmp_path / "locks").acquire(tmp_path / "runs" / "c", "c")  # other devices
    first.release()
    RunLock(str(project), "cpu", tmp_path / "locks").acquire(tmp_path / "runs" / "d", "d")

    # a holder killed with SIGKILL leaves its files behind, and the lock is free at once
    other = tmp_path / "other"
    other.mkdir()
    # ...even while a child it forked (a DataLoader worker) lives on: the lock is the process's alone
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time; from aistudio.runs.lock import RunLock; "
        f"RunLock({str(other)!r}, 'cpu', {str(tmp_path / 'locks')!r}).acquire('x', 'x'); "
        "child = os.fork()\n"
        "if child == 0: time.sleep(60); os._exit(0)\n"
        "print('held', child, flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    word, worker = holder.stdout.readline().split()
    assert word == "held"
    try:
        with pytest.raises(AistudioError):
            RunLock(str(other), "cpu", tmp_path / "locks").acquire("y", "y")
        holder.kill()
        holder.wait()
        os.kill(int(worker), 0)  # the forked child is still alive...
        RunLock(str(other), "cpu", tmp_path / "locks").acquire("z", "z")  # ...and the lock is free
    finally:
        os.kill(int(worker), signal.SIGKILL)


class SignalsItsOwnProcess(Dataset):
    """Each item sends a stop signal to the process loading it, as a terminal's Ctrl-C or ``timeout``
    reaches every process of the group, DataLoader workers included."""

    def __init__(self, signum: int):
        self.signum = signum

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index):
        os.kill(os.getpid(), self.signum)
        return index


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_dataloader_workers_leave_stop_signals_to_the_main_process(signum):
    from aistudio.data.datamodule import init_worker
    from aistudio.runs.stop import StopSignals

    signals = StopSignals()
    signals.install()  # what train.py has in place when Lightning forks the workers
    try:
        loader = DataLoader(SignalsItsOwnProcess(signum), num_workers=2, worker_init_fn=init_worker)
        assert sorted(int(x) for x in loader) == [0, 1, 2, 3]  # no worker raised or died
        assert signals.received is None  # and the main process was not asked to stop
    finally:
        signals.restore()


def test_atomic_writes_are_readable_like_plain_files_and_stale_temp_files_are_removed(tmp_path):
    from aistudio.runs.atomic import atomic_write_json, remove_stale_temp_files

    previous = os.umask(0o027)
    try:
        atomic_write_json(tmp_path / "run.json", {"a": 1})
        assert (tmp_path / "run.json").stat().st_mode & 0o777 == 0o640
        os.umask(0o022)
        atomic_write_json(tmp_path / "run.json", {"a": 2})
        assert (tmp_path / "run.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(previous)
    (tmp_path / "checkpoints").mkdir()
    left = [tmp_path / ".run.json.abc123.tmp", tmp_path / "checkpoints" / ".best.ckpt.x1y2.tmp",
            tmp_path / "checkpoints" / ".last.ckpt.link.tmp"]
    for path in left:
        path.write_bytes(b"half")
    (tmp_path / "checkpoints" / "best.ckpt").write_bytes(b"whole")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(left)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["best.ckpt", "run.json"]


def test_a_process_stopped_while_its_loader_workers_live_still_exits():
    """Workers ignore SIGTERM, which is how multiprocessing ends them at exit: without the exit hook that
    kills them first, a run stopped during start-up or validation would wait for them forever."""
    code = (
        "import sys; from torch.utils.data import DataLoader; "
        "from aistudio.data.datamodule import init_worker; from aistudio.runs.stop import reap_workers_at_exit; "
        "reap_workers_at_exit(); "
        "loader = DataLoader(list(range(64)), num_workers=2, persistent_workers=True, worker_init_fn=init_worker); "
        "it = iter(loader); next(it); "
        "print('workers live', flush=True); sys.exit(130)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 130 and "workers live" in result.stdout, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


def test_status_changes_are_fsynced_and_per_epoch_progress_is_not(tmp_path, monkeypatch):
    """Every write stays atomic (temp file + rename); only status changes wait for the disk."""
    from aistudio.runs.record import RunRecord

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    record = RunRecord.create(tmp_path / "run")
    assert len(synced) == 1  # pending
    record.mark_running()
    assert len(synced) == 2
    record.update(epochs_completed=1, heartbeat_at="now")  # an epoch's progress
    record.beat()
    assert len(synced) == 2 and json.loads((tmp_path / "run" / "run.json").read_text())["epochs_completed"] == 1
    record.mark_completed()
    assert len(synced) == 3 and json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "completed"
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["run.json"]  # no temp file left
