"""Scores under DDP when the ranks evaluate different numbers of images (a split that is not a multiple of
the world size, sharded without padding: aistudio/data/sampling.py's EvalShardSampler).

torchmetrics' mean average precision syncs its per-image states one image at a time, so uneven counts
make the ranks' collectives disagree (gloo aborts). ``ShardedMeanAveragePrecision`` is checked on two real
gloo processes against the same images scored in one process, and a real ``train.py`` detection run under
``hardware=cpu_ddp`` validates and tests odd-sized splits to the end."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from aistudio.runs.record import load_run
from tests.helpers import ROOT, run_train

# rank r scores images r, r + 2, ... of `total` (as EvalShardSampler shards them); rank 0 also scores all of
# them alone, unsynced, and prints both results
TWO_RANKS = textwrap.dedent("""
    import sys, json, torch, torch.distributed as dist, torch.multiprocessing as mp
    from aistudio.tasks.sharded_map import ShardedMeanAveragePrecision

    def masks(boxes):  # filled boxes on a 64 x 64 image
        out = torch.zeros(len(boxes), 64, 64, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
            out[k, y0:y1, x0:x1] = True
        return out

    def images(total, segm):
        g, out = torch.Generator().manual_seed(0), []
        for i in range(total):
            n = 0 if i % 4 == 3 else 3  # some images without any detection
            xy = torch.rand(n, 2, generator=g) * 45
            boxes = torch.cat([xy, xy + 10 + torch.rand(n, 2, generator=g) * 5], 1)
            labels = torch.randint(0, 3, (n,), generator=g)
            truth = ({"boxes": boxes[:1] + torch.rand(1, 4, generator=g) * 4, "labels": labels[:1]} if n else
                     {"boxes": torch.tensor([[0.0, 0, 12, 12]]), "labels": torch.tensor([i % 3])})
            pred = {"boxes": boxes, "scores": torch.rand(n, generator=g), "labels": labels}
            if segm:
                pred["masks"], truth["masks"] = masks(boxes), masks(truth["boxes"])
            out.append(([pred], [truth]))
        return out

    def metric(segm, **kwargs):
        return ShardedMeanAveragePrecision(box_format="xyxy", iou_type=("bbox", "segm") if segm else "bbox",
                                           class_metrics=True, backend="faster_coco_eval", **kwargs)

    def run(rank, total, segm, store):
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
        shared = metric(segm)
        for preds, truth in images(total, segm)[rank::2]:
            shared.update(preds, truth)
        synced = {k: v.tolist() for k, v in shared.compute().items() if k.startswith(("map", "mar", "segm_map", "bbox_map"))}
        if rank == 0:
            alone = metric(segm, sync_on_compute=False)
            for preds, truth in images(total, segm):
                alone.update(preds, truth)
            single = {k: v.tolist() for k, v in alone.compute().items() if k.startswith(("map", "mar", "segm_map", "bbox_map"))}
            print(json.dumps({"synced": synced, "single": single}))
        dist.destroy_process_group()

    if __name__ == "__main__":
        mp.spawn(run, args=(int(sys.argv[1]), sys.argv[2] == "segm", sys.argv[3]), nprocs=2)
""")


@pytest.mark.parametrize(("total", "iou"), [(7, "bbox"), (8, "bbox"), (7, "segm")])
def test_map_synced_over_ranks_with_uneven_image_counts_equals_the_single_process_map(total, iou, tmp_path):
    script = tmp_path / "two_ranks.py"  # a file: the spawned ranks import their function from it
    script.write_text(TWO_RANKS)
    result = subprocess.run([sys.executable, str(script), str(total), iou, str(tmp_path / "store")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["synced"] == scores["single"]
    keys = ["bbox_map_50", "segm_map_50"] if iou == "segm" else ["map_50"]
    assert all(0.05 < scores["single"][key] < 1 for key in keys)  # scores the split between ranks could change


@pytest.mark.slow
def test_a_ddp_detection_run_validates_and_tests_splits_the_ranks_share_unevenly(tmp_path):
    # 45 generated images: train 31, val 7, test 7; each rank scores 4 or 3 of the val and test images
    run_dir = tmp_path / "run"
    result = run_train(["experiment=shapes_detection", "hardware=cpu_ddp", "data.project.num_images=45",
                        "trainer.max_epochs=1", "trainer.limit_train_batches=2", "callbacks.progress_bar.kind=none",
                        "plots=false", f"hydra.run.dir={run_dir}"], tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train 31 / val 7 / test 7" in (run_dir / "logs" / "training.log").read_text()
    record = load_run(run_dir)
    assert record["status"] == "completed" and {"test_map", "test_map_50"} <= set(record["test_metrics"])
    assert "val_map" in json.loads((run_dir / "metrics.json").read_text())[0]
