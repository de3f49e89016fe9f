"""Images/s of the training input pipeline, against the same work done by hand in one process.

Pipeline = exactly what a run trains from: ``ProjectDataModule.train_dataloader()`` built from the real
config (ClassificationDataset, the augmentation preset's albumentations train transform, the epoch
sampler with its per-batch seeding, the workers' collate into reused shared memory and the hand-back a
Trainer does), with ``data.num_workers`` 0, 1 and 2, and 2 workers once more with
``data.reuse_batch_memory=false`` (a fresh segment per tensor per batch, as the default collate does).
Baselines, same images, same transform config, no DataLoader:

* bare loop: for each image: read the file, ``cv2.imdecode``, BGR->RGB, the train transform (ending in
  ToTensorV2), in a plain Python loop (no batching). Like the loaders of a run, it leaves the final
  Normalize to the device (``data.normalize_on_device``; ``data.normalize_on_device=false`` keeps it);
* decode only: read + decode + BGR->RGB, the ceiling of any pipeline that decodes every image.

Target (issue 14): DataLoader with 2 workers >= 1.6x the single-process bare loop. Each case runs one
warm-up epoch (worker start, page cache, allocator) and then ``--epochs`` timed epochs; the cases
alternate over ``--rounds`` rounds (order reversed every other round) and a case's figure is its best
round; before each case the script waits (``--quiet-s``) for other processes to go idle, and the "others"
column says how much of the cores they used anyway. "first batch s" is the warm-up
epoch's wait for its first batch (worker start included). A second table breaks the per-image cost
down (read, decode, transform; collate and the DataLoader's own transfer, measured on ready samples)
and estimates what N workers can reach on this machine: min(N, cores) / (bare loop + collate +
transfer), the main process taken as free. A worker hands each batch to the main process through
shared memory; a fresh segment per batch (the default collate) costs a small VM about as much per byte
as decoding a JPEG, which is why a run's workers reuse theirs (``data.reuse_batch_memory``, measured
both ways in the breakdown).

Default data: a generated project of photo-like 320x240 JPEGs (``--images``, ``--source-size``) trained
with ``augmentation=default`` (random resized crop to ``--image-size`` 224, flip, colour jitter,
normalise); ``--project DIR`` measures a dataset.json project of your own instead. The built-in digits
(``python train.py``'s default: 8x8 PNGs, augmentation light at 32 px) follow as a second row set
unless ``--no-digits``: there, the per-image work is tiny and the DataLoader's own cost dominates.

    .venv/bin/python scripts/bench/input_pipeline.py [--images 400] [--source-size 320x240]
        [--image-size 224] [--batch-size 32] [--augmentation default] [--project DIR] [--workers 0,1,2]
        [--epochs 2] [--rounds 2] [--no-digits] [--quiet-s 60] [--data-dir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import REPO, OtherLoad, isolate, table, wait_quiet

sys.path.insert(0, str(REPO))  # this checkout's aistudio, even without `pip install -e .`

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from aistudio.config import register_resolvers  # noqa: E402
from aistudio.data.batch_ring import ring_for_loader, take_token  # noqa: E402
from aistudio.data.pixel_scaling import split_scaling  # noqa: E402
from aistudio.data.project import Project, project_from_config, write_project  # noqa: E402
from aistudio.training.fit import build_datamodule  # noqa: E402

TARGET_RATIO = 1.6  # 2 workers / bare loop


# -- data -----------------------------------------------------------------------------------------------

def photo_like(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A BGR image with what makes photos cost what they cost to decode: smooth gradients, overlapping
    soft-edged regions, fine texture and sensor noise (a flat or random image compresses unrealistically)."""
    base = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    image = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    for _ in range(int(rng.integers(3, 8))):
        layer = image.copy()
        cv2.ellipse(layer, (int(rng.integers(0, width)), int(rng.integers(0, height))),
                    (int(rng.integers(width // 20, width // 3)), int(rng.integers(height // 20, height // 3))),
                    float(rng.uniform(0, 180)), 0, 360, tuple(float(v) for v in rng.integers(0, 256, 3)), -1)
        image = cv2.addWeighted(image, 0.4, layer, 0.6, 0)
    texture = cv2.GaussianBlur(rng.normal(0, 18, (height, width, 3)).astype(np.float32), (0, 0), 1.2)
    return np.clip(image + texture + rng.normal(0, 4, (height, width, 3)), 0, 255).astype(np.uint8)


def write_photo_project(root: Path, images: int, width: int, height: int, classes: int = 10) -> Path:
    """``images`` training JPEGs (quality 90) + a small val split, as a dataset.json project."""
    rng = np.random.default_rng(0)
    entries = []
    for index in range(images + max(classes, images // 10)):
        label = index % classes
        relative = f"images/{label}/{index:05d}.jpg"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        ok, encoded = cv2.imencode(".jpg", photo_like(rng, width, height), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        (root / relative).write_bytes(encoded.tobytes())
        entries.append({"file": relative, "width": width, "height": height, "label": f"c{label}",
                        "split": ["train" if index < images else "val"]})
    write_project(root, [f"c{k}" for k in range(classes)], entries, generator="scripts/bench/input_pipeline.py")
    return root


def data_config(overrides: list[str]) -> dict[str, Any]:
    """The resolved ``data`` node of conf/train.yaml with ``overrides`` (what a run builds its datamodule from)."""
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hardware=cpu", *overrides])
    return {"data": OmegaConf.to_container(cfg.data, resolve=True)}


# -- the cases ------------------------------------------------------------------------------------------

class Setting:
    """One dataset + transform config: the records, the datamodule, a separately built transform."""

    def __init__(self, name: str, overrides: list[str]):
        self.name, self.overrides = name, overrides
        self.config = data_config(overrides)
        self.project: Project = project_from_config(self.config["data"])
        self.records = self.project.split("train")
        self.flag = cv2.IMREAD_GRAYSCALE if int(self.config["data"]["channels"]) == 1 else cv2.IMREAD_COLOR
        # as the datamodule builds it, and as its workers run it in training: without the final Normalize,
        # which a run applies to the uint8 batch on the device (data.normalize_on_device)
        self.transform = instantiate(self.config["data"]["train_transform"], _convert_="all")
        if self.config["data"].get("normalize_on_device", True):
            # classification batches are stacked by the default collate: the loaders hand over HWC
            self.transform, _ = split_scaling(self.transform, int(self.config["data"]["channels"]), hwc=True)
        self.batch_size = int(self.config["data"]["batch_size"])

    def datamodule(self, workers: int, reuse: bool = True) -> Any:
        datamodule = build_datamodule(self.config, self.project)
        datamodule.num_workers = workers
        datamodule.reuse_batch_memory = reuse  # data.reuse_batch_memory (the default: true)
        datamodule.uint8_batches = True  # as a running Trainer's loaders (uint8 when normalize_on_device)
        return datamodule

    def decode(self, path: Path) -> np.ndarray:
        image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), self.flag)
        return image[:, :, None] if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def epochs_of(run_epoch: Callable[[], int], epochs: int) -> dict[str, float]:
    """One warm-up epoch, then ``epochs`` timed: images, seconds."""
    run_epoch()
    images, start = 0, time.perf_counter()
    for _ in range(epochs):
        images += run_epoch()
    return {"images": images, "seconds": time.perf_counter() - start}


def case_decode(setting: Setting, epochs: int) -> dict[str, float]:
    paths = [record.file for record in setting.records]

    def epoch() -> int:
        for path in paths:
            setting.decode(path)
        return len(paths)
    return epochs_of(epoch, epochs)


def case_bare(setting: Setting, epochs: int) -> dict[str, float]:
    items = [(record.file, int(record.label)) for record in setting.records]
    transform = setting.transform

    def epoch() -> int:
        for path, _label in items:
            image = transform(image=setting.decode(path))["image"]
            if not isinstance(image, torch.Tensor):
                image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        return len(items)
    return epochs_of(epoch, epochs)


def case_bare_processes(setting: Setting, epochs: int, processes: int) -> dict[str, float]:
    """The bare loop in ``processes`` forked processes at once, each over its share of the images, with no
    DataLoader at all: what this machine's cores give on this work in parallel (shared caches, memory
    bandwidth, the hypervisor), the ceiling of ``processes`` workers. Each warms up, then all start together."""
    import multiprocessing

    context = multiprocessing.get_context("fork")  # as the DataLoader's workers start (OpenCV's 1 thread inherited)
    start_together, results = context.Barrier(processes), context.Queue()
    items = [(record.file, int(record.label)) for record in setting.records]

    def run(share: list[tuple[Path, int]]) -> None:
        torch.set_num_threads(1)

        def epoch() -> int:
            for path, _label in share:
                image = setting.transform(image=setting.decode(path))["image"]
                if not isinstance(image, torch.Tensor):
                    torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
            return len(share)
        epoch()
        start_together.wait()
        start, images = time.perf_counter(), 0
        for _ in range(epochs):
            images += epoch()
        results.put((images, time.perf_counter() - start))

    children = [context.Process(target=run, args=(items[k::processes],)) for k in range(processes)]
    for child in children:
        child.start()
    measured = [results.get(timeout=600) for _ in children]
    for child in children:
        child.join()
    return {"images": sum(n for n, _ in measured), "seconds": max(s for _, s in measured)}


def case_loader(setting: Setting, epochs: int, workers: int, reuse: bool = True) -> dict[str, float]:
    datamodule = setting.datamodule(workers, reuse)
    loader = datamodule.train_dataloader()
    first: list[float] = []

    def epoch() -> int:
        seen, start = 0, time.perf_counter()
        for batch in loader:
            x = datamodule.on_before_batch_transfer(batch, 0)[0]  # as the Trainer receives it (hands reused memory back)
            if not first:
                first.append(time.perf_counter() - start)
            seen += len(x)
        return seen
    result = epochs_of(epoch, epochs)
    loader = datamodule = None  # persistent workers end with their iterator
    gc.collect()
    return {**result, "first_batch_s": first[0]}


def run_cases(setting: Setting, workers: list[int], epochs: int, rounds: int,
              quiet_s: float) -> dict[str, dict[str, Any]]:
    """Every case, ``rounds`` times in alternating order; each waits (up to ``quiet_s``) for an idle
    machine and records how much of it other processes used meanwhile. A case's figure is its best
    round: another process's work only ever slows a case down."""
    cases: dict[str, Callable[[], dict[str, float]]] = {
        "decode only": lambda: case_decode(setting, epochs),
        "bare loop": lambda: case_bare(setting, epochs),
        f"bare loop in {max(workers)} processes (no DataLoader)": lambda: case_bare_processes(setting, epochs,
                                                                                             max(workers)),
        **{f"DataLoader, {n} worker{'s' if n != 1 else ''}": (lambda n=n: case_loader(setting, epochs, n))
           for n in workers},
        f"DataLoader, {max(workers)} workers, fresh shared memory per batch (reuse_batch_memory=false)":
            lambda: case_loader(setting, epochs, max(workers), reuse=False),
    }
    results: dict[str, dict[str, Any]] = {name: {"rounds": []} for name in cases}
    for round_ in range(rounds):
        order = list(cases) if round_ % 2 == 0 else list(reversed(cases))
        for name in order:
            if quiet_s:
                wait_quiet(quiet_s)
            with OtherLoad() as other:
                measured = cases[name]()
            result = {**measured, "images_per_s": measured["images"] / measured["seconds"], "other_load": other.share}
            results[name]["rounds"].append(result)
            print(f"  {setting.name} round {round_ + 1}: {name}: {result['images_per_s']:.0f} images/s "
                  f"(other processes: {100 * other.share:.0f}% of the cores)", flush=True)
    for result in results.values():
        best = max(result["rounds"], key=lambda r: r["images_per_s"])
        result.update(images_per_s=best["images_per_s"], other_load=best["other_load"],
                      first_batch_s=min((r["first_batch_s"] for r in result["rounds"] if "first_batch_s" in r),
                                        default=None))
    return results


# -- where the time goes --------------------------------------------------------------------------------

class Precomputed(torch.utils.data.Dataset):
    """Serves ready samples: a DataLoader over it costs only sampling, collate and the transfer between processes."""

    def __init__(self, samples: list[tuple[torch.Tensor, int]]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.samples[index]


def per_image_ms(fn: Callable[[], int], repeat: int = 3) -> float:
    fn()
    start, images = time.perf_counter(), 0
    for _ in range(repeat):
        images += fn()
    return 1e3 * (time.perf_counter() - start) / images


def breakdown(setting: Setting) -> dict[str, float]:
    """Milliseconds per image of each stage. The per-image stages are differences of cumulative loops
    (read; read + decode; + BGR->RGB; + transform = the bare loop), so each is measured as the bare loop
    runs it (the image still in cache); collate and transfer are measured on ready samples."""
    paths = [record.file for record in setting.records]
    transform = setting.transform
    flag = setting.flag

    def read() -> int:
        for path in paths:
            np.fromfile(str(path), dtype=np.uint8)
        return len(paths)

    def decode() -> int:
        for path in paths:
            cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), flag)
        return len(paths)

    def to_rgb() -> int:
        for path in paths:
            setting.decode(path)
        return len(paths)

    def augment() -> int:
        for path in paths:
            transform(image=setting.decode(path))
        return len(paths)

    samples = [(transform(image=setting.decode(path))["image"], 0) for path in paths]
    batches = [samples[i:i + setting.batch_size] for i in range(0, len(samples), setting.batch_size)]

    def collate() -> int:
        for batch in batches:
            torch.utils.data.default_collate(batch)
        return len(samples)

    def shared_collate() -> int:  # what default_collate does in a worker: stack into fresh shared memory
        for batch in batches:
            images = [sample[0] for sample in batch]
            out = images[0].new(images[0]._typed_storage()._new_shared(sum(x.numel() for x in images)))
            torch.stack(images, 0, out=out.resize_(len(images), *images[0].shape))
        return len(samples)

    def transfer(workers: int, reuse: bool = False) -> float:
        collate = ring_for_loader(workers, 2) if reuse else None
        loader = torch.utils.data.DataLoader(Precomputed(samples), batch_size=setting.batch_size,
                                             num_workers=workers, persistent_workers=workers > 0, collate_fn=collate)
        ms = per_image_ms(lambda: sum(len(take_token(batch)[0]) for batch in loader))
        loader = None  # its persistent worker ends
        gc.collect()
        return ms

    cumulative = [per_image_ms(fn) for fn in (read, decode, to_rgb, augment)]
    return {
        "read file": cumulative[0],
        "cv2.imdecode": cumulative[1] - cumulative[0],
        "BGR->RGB": cumulative[2] - cumulative[1],
        "train transform": cumulative[3] - cumulative[2],
        "= bare loop": cumulative[3],
        "collate in-process (0 workers)": per_image_ms(collate),
        "collate into fresh shared memory (default_collate in a worker)": per_image_ms(shared_collate),
        "DataLoader over ready samples, 0 workers": transfer(0),
        "DataLoader over ready samples, 1 worker, fresh shared memory per batch": transfer(1),
        "DataLoader over ready samples, 1 worker, reused (= collate + transfer in a run)": transfer(1, reuse=True),
    }


def worker_ceiling(parts: dict[str, float], workers: int) -> float:
    """Images/s that ``workers`` workers could reach on this machine's cores if each image cost a worker
    the bare loop's time plus the DataLoader's own (collate, transfer) and the main process cost nothing."""
    per_image = parts["= bare loop"] + parts["DataLoader over ready samples, 1 worker, reused (= collate + transfer in a run)"]
    return 1e3 * min(workers, os.cpu_count() or 1) / per_image


# -- main -----------------------------------------------------------------------------------------------

def rows_of(setting: Setting, results: dict[str, dict[str, Any]]) -> list[list[object]]:
    bare = results["bare loop"]["images_per_s"]
    ceiling = results["decode only"]["images_per_s"]
    rows = []
    for name, result in results.items():
        ratio = result["images_per_s"] / bare
        target, verdict = "", ""
        if name == "DataLoader, 2 workers":
            target, verdict = f">= {TARGET_RATIO}x bare", "ok" if ratio >= TARGET_RATIO else "UNDER"
        first = result["first_batch_s"]
        rows.append([setting.name, name, f"{result['images_per_s']:.0f}", f"{ratio:.2f}",
                     f"{result['images_per_s'] / ceiling:.2f}", f"{first:.2f}" if first is not None else "",
                     f"{100 * result['other_load']:.0f}%", target, verdict])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400, help="training images of the generated project")
    parser.add_argument("--source-size", default="320x240", help="WxH of the generated JPEGs")
    parser.add_argument("--image-size", type=int, default=224, help="data.image_size (the crop the model sees)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--augmentation", default="default", help="conf/augmentation preset (default: crop+flip+colour)")
    parser.add_argument("--project", help="measure this dataset.json project instead of a generated one")
    parser.add_argument("--workers", default="0,1,2", help="data.num_workers values to measure")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per case and round (after 1 warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over all cases, order reversed each round")
    parser.add_argument("--no-digits", action="store_true", help="skip the built-in digits row set")
    parser.add_argument("--quiet-s", type=float, default=60.0,
                        help="before each case, wait up to this long for other processes to go idle (0: never)")
    parser.add_argument("--data-dir", help="AISTUDIO_DATA_DIR holding (or receiving) the digits")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    runs, data_dir = isolate("input-pipeline", args.data_dir)
    workers = [int(w) for w in args.workers.split(",")]
    # one OpenCV thread here, as in the workers: the bare loop is a one-core baseline, and a worker forked
    # while this process's OpenCV pool threads sleep hangs in cv2.setNumThreads (see init_worker)
    cv2.setNumThreads(1)

    if args.project:
        project = Path(args.project).expanduser().resolve()
        label = project.name
    else:
        width, height = (int(v) for v in args.source_size.lower().split("x"))
        start = time.perf_counter()
        project = write_photo_project(runs.parent / "photos", args.images, width, height)
        label = f"photo JPEG {width}x{height}"
        print(f"generated {args.images} photo-like {width}x{height} JPEGs in {time.perf_counter() - start:.1f} s")
    settings = [Setting(f"{label} -> {args.image_size}", [
        "data=project", f"data.project={project}", f"augmentation={args.augmentation}",
        f"data.image_size={args.image_size}", f"data.batch_size={args.batch_size}"])]
    if not args.no_digits:
        settings.append(Setting("digits 8x8 -> 32 (train.py default)", []))

    print(f"{os.cpu_count()} cores; main process: torch {torch.get_num_threads()} threads, "
          f"OpenCV {cv2.getNumThreads()} threads; load average {os.getloadavg()[0]:.2f}")
    report: dict[str, Any] = {"cores": os.cpu_count(), "target_ratio": TARGET_RATIO, "settings": []}
    rows: list[list[object]] = []
    costs: list[list[object]] = []
    for setting in settings:
        print(f"{setting.name}: {len(setting.records)} training images, batch {setting.batch_size}, "
              f"overrides {' '.join(setting.overrides) or '(none)'}", flush=True)
        results = run_cases(setting, workers, args.epochs, args.rounds, args.quiet_s)
        if args.quiet_s:
            wait_quiet(args.quiet_s)
        parts = breakdown(setting)
        rows += rows_of(setting, results)
        costs += [[setting.name, stage, f"{ms:.3f}"] for stage, ms in parts.items()]
        bare = results["bare loop"]["images_per_s"]
        ceilings = {n: worker_ceiling(parts, n) for n in workers if n > 0}
        costs += [[setting.name, f"-> ceiling, {n} worker{'s' if n != 1 else ''} on {os.cpu_count()} cores",
                   f"{1e3 / c:.3f}  ({c:.0f} images/s = {c / bare:.2f}x bare)"] for n, c in ceilings.items()]
        report["settings"].append({"name": setting.name, "overrides": setting.overrides,
                                   "train_images": len(setting.records), "batch_size": setting.batch_size,
                                   "results": results, "breakdown_ms_per_image": parts,
                                   "ceiling_images_per_s": ceilings})

    print(f"\nInput pipeline, images/s (best of {args.rounds} alternating rounds of {args.epochs} timed epochs, "
          "each after a warm-up epoch; others: the cores other processes used meanwhile)\n")
    print(table(["data", "case", "images/s", "x bare", "x decode", "first batch s", "others", "target", ""], rows))
    busy = [r for r in rows if float(str(r[6]).rstrip("%")) >= 10]
    if busy:
        print(f"\n({len(busy)} figure(s) taken while other processes used >= 10% of the cores: rerun on an idle "
              "machine before trusting them)")
    print("\nWhere an image's time goes, ms per image (in this process; ceiling: cores / (bare loop + "
          "collate + transfer), the main process taken as free)\n")
    print(table(["data", "stage", "ms/image"], costs))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
