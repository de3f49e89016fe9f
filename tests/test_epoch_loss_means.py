"""The epoch losses in metrics.json of real ``train.py`` runs: under 2-process DDP the exact batch-weighted
mean of both ranks' steps, and across a stop inside an epoch and its resume the same mean as an
uninterrupted run. Per-step losses come from a test-only callback (tests/loss_recorder.py) added by Hydra
overrides."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import edit_dataset, make_color_project, run_train

RECORDER = "+callbacks.loss_recorder._target_=tests.loss_recorder.LossRecorder"


def weighted_mean(steps: list[tuple[int, float]]) -> float:
    return sum(n * loss for n, loss in steps) / sum(n for n, _ in steps)


@pytest.mark.slow
def test_ddp_epoch_losses_are_the_batch_weighted_mean_of_both_ranks_steps_each_image_scored_once(tmp_path):
    # 27 train images: the sampler pads to 28, 14 a rank, in batches of 5, 5, 4 on both ranks. Evaluation is
    # sharded without padding (aistudio/data/sampling.py's EvalShardSampler): of the 7 val images rank 0
    # scores 4 (batches of 3, 1) and rank 1 3; of the 5 test images 3 and 2. Only sums and counts added
    # over processes give the exact mean then (an equal-weight mean of the ranks' means does not).
    project = make_color_project(tmp_path / "colors", per_class=13)

    def one_test_image_to_val(data):
        image = next(i for i in data["images"] if i["split"][0] == "test")
        image["split"][0] = "val"

    edit_dataset(project, one_test_image_to_val)
    run_dir, steps_dir = tmp_path / "run", tmp_path / "steps"
    result = run_train(["data=project", f"data.project={project}", "hardware=cpu_ddp", "data.image_size=16",
                        "data.batch_size=5", "data.eval_batch_size=3", "model=resnet18", "optimizer.lr=0.01",
                        "trainer.max_epochs=2", "callbacks.early_stopping=null", "plots=false",
                        RECORDER, f"+callbacks.loss_recorder.directory={steps_dir}", f"hydra.run.dir={run_dir}"],
                       tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [0, 1]
    ranks = [json.loads((steps_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]

    def steps(stage: str, epoch: int | None, rank: int | None = None) -> list[tuple[int, float]]:
        chosen = ranks if rank is None else [ranks[rank]]
        return [(int(n), loss) for r in chosen for e, n, loss in r[stage] if epoch is None or e == epoch]

    for stage, sizes in (("train", [[5, 5, 4], [5, 5, 4]]), ("val", [[3, 1], [3]])):
        for epoch in (0, 1):
            assert [[n for n, _ in steps(stage, epoch, rank)] for rank in (0, 1)] == sizes, (stage, epoch)
            expected = weighted_mean(steps(stage, epoch))
            logged = metrics[epoch][f"{stage}_loss"]
            assert logged == pytest.approx(expected, rel=1e-5), (stage, epoch)
            # what the test tells apart from the exact mean: rank 0's own mean (no reduction over processes),
            # the unweighted mean of the steps (batch sizes ignored), and with uneven shards the mean of
            # the ranks' means (equal to the exact mean when the ranks have as many images)
            rank_means = [weighted_mean(steps(stage, epoch, rank)) for rank in (0, 1)]
            wrong = [*rank_means, sum(loss for _, loss in steps(stage, epoch)) / len(steps(stage, epoch))]
            if sizes[0] != sizes[1]:
                wrong.append(sum(rank_means) / 2)
            else:
                assert sum(rank_means) / 2 == pytest.approx(expected, rel=1e-6)
            for value in wrong:
                assert abs(value - expected) > 1e-3 * abs(expected), (stage, epoch, value, expected)

    # the test of the best checkpoint after fit, on the same two processes
    test_metrics = json.loads((run_dir / "run.json").read_text())["test_metrics"]
    test_sizes = [[n for n, _ in steps("test", None, rank)] for rank in (0, 1)]
    assert test_sizes == [[3], [2]]  # the 5 test images, each on one rank (padding would score 6)
    assert test_metrics["test_loss"] == pytest.approx(weighted_mean(steps("test", None)), rel=1e-5)


@pytest.mark.slow
def test_a_run_stopped_inside_an_epoch_and_resumed_logs_the_uninterrupted_epoch_losses_and_scores(tmp_path, monkeypatch):
    # one intra-op thread (the DDP runs get one a process from Lightning): on a busy 2-core machine two
    # OpenMP threads beside a DataLoader worker made each of these 5-batch epochs take ~18 s instead of ~0.5 s
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    project = make_color_project(tmp_path / "colors")  # 24 train images: batches of 5, 5, 5, 5, 4
    args = ["data=project", f"data.project={project}", "hardware=cpu", "data.image_size=16", "data.batch_size=5",
            "model=resnet18", "optimizer.lr=0.01", "trainer.max_epochs=2", "callbacks.early_stopping=null",
            "plots=false", "test=false"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    result = run_train([*args, f"hydra.run.dir={whole}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    # SIGINT to the trainer after epoch 1's batch 1 (what `kill -INT` does, at a known batch): the run stops
    # at that batch boundary and writes last.ckpt there
    stop = ["+callbacks.stop_at._target_=tests.loss_recorder.SignalAt", "+callbacks.stop_at.epoch=1",
            "+callbacks.stop_at.batch=1", f"+callbacks.stop_at.marker={tmp_path / 'signal-sent'}"]
    result = run_train([*args, *stop, f"hydra.run.dir={stopped}"], tmp_path)
    assert result.returncode == 130, result.stderr[-3000:]
    assert json.loads((stopped / "run.json").read_text())["status"] == "interrupted"
    assert [m["epoch"] for m in json.loads((stopped / "metrics.json").read_text())] == [0]
    checkpoint = torch.load(stopped / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["aistudio_resume"]["batches_done"] == 2
    saved = checkpoint["epoch_train_losses"]
    assert saved["count"] == 10 and set(saved["sums"]) == {"loss"}  # epoch 1's first two batches

    result = run_train([f"resume={stopped}"], tmp_path)  # the marker exists: no second signal
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming inside epoch 1: 2 batches were done" in (stopped / "logs" / "training.log").read_text()
    expected, resumed = (json.loads((d / "metrics.json").read_text()) for d in (whole, stopped))
    assert [m["epoch"] for m in resumed] == [0, 1]
    scores = sorted(k for k in expected[1] if k.startswith(("train_", "val_")))
    assert {"train_loss", "train_acc", "train_f1", "val_loss", "val_acc"} <= set(scores)
    for key in scores:  # the train metrics' counts before the stop are kept too (aistudio/tasks/metric_state.py)
        assert [m[key] for m in resumed] == pytest.approx([m[key] for m in expected], rel=1e-5), key
    assert checkpoint["epoch_train_metrics"]["states"]["confusion"].sum() == 10  # the saved batches' images
    # the saved sums matter: the resumed batches alone (or the saved ones alone) give another mean
    mean, before = expected[1]["train_loss"], float(saved["sums"]["loss"])
    for partial in ((mean * 24 - before) / 14, before / 10):
        assert abs(partial - mean) > 1e-3 * mean, (partial, mean)
