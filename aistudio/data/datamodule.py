"""The one LightningDataModule: a dataset.json project + task dataset + augmentation pipelines."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from aistudio import AistudioError
from aistudio.cpus import cpu_budget
from aistudio.data.annotation_parsers import AnnotationParser
from aistudio.data.batch_ring import ring_for_loader, take_token
from aistudio.data.pixel_scaling import PixelScaling, split_scaling
from aistudio.data.project import Project, load_and_report
from aistudio.data.sampling import EpochShuffleSampler, EvalShardSampler, distributed_world
from aistudio.runs.stop import ignore_stop_signals, reap_workers_at_exit

log = logging.getLogger(__name__)


def init_worker(worker_id: int) -> None:
    """Every DataLoader worker: leave stop signals to the main process (a terminal's Ctrl-C reaches the
    whole process group), then seed the worker as Lightning would (``seed_everything(workers=True)``;
    Lightning adds its own init function only to loaders that have none)."""
    ignore_stop_signals()
    if os.environ.get("PL_SEED_WORKERS") == "1":
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


MAX_AUTO_WORKERS = 16


def one_opencv_thread() -> None:
    """OpenCV keeps to one thread, set in this process before its workers fork (they inherit it): a
    pool of cores' threads in each of many workers oversubscribes the cores (224 px augmentation
    was ~30% slower per image). Not set in the worker itself: ``cv2.setNumThreads`` in a child forked
    after the parent's OpenCV pool started hangs the child."""
    import cv2

    cv2.setNumThreads(1)


def default_num_workers(processes: int = 1) -> int:
    """The CPUs this process may use (its cores, capped by a container's CPU quota: :mod:`aistudio.cpus`),
    shared by the ``processes`` training processes of this machine (DDP), less one for each training process
    itself; at most :data:`MAX_AUTO_WORKERS` (CI's 2 cores: 1)."""
    return max(0, min(MAX_AUTO_WORKERS, cpu_budget().cpus // max(1, processes) - 1))


class ProjectDataModule(pl.LightningDataModule):
    """Loads and validates the project once, then serves train/val/test loaders for ``split_index``.

    ``dataset`` builds the task dataset (``records, transform, channels, project=``) and ``collate_fn`` batches
    it; ``annotations`` reads and checks dataset.json's entries (without it: ``task``'s parser). All three come
    from the task config so detection/segmentation reuse this class unchanged.
    ``image_size``, ``mean`` and ``std`` are recorded for the augmentation pipelines and for export.
    """

    def __init__(self, project: str | os.PathLike, dataset: Callable[..., Any], task: str = "classification",
                 annotations: AnnotationParser | None = None, split_index: int = 0, batch_size: int = 32,
                 eval_batch_size: int | None = None,
                 num_workers: int | str = "auto", channels: int = 3, image_size: int | list[int] = 224,
                 mean: list[float] | None = None, std: list[float] | None = None,
                 train_transform: Callable[..., Any] | None = None,
                 eval_transform: Callable[..., Any] | None = None,
                 collate_fn: Callable[..., Any] | None = None, check_images: str = "header",
                 pin_memory: bool | str = "auto", drop_last: bool = False, horizontal_flip: float = 0.5,
                 seed: int = 0, persistent_workers: bool = True, prefetch_factor: int = 2,
                 normalize_on_device: bool = True, reuse_batch_memory: bool = True):
        super().__init__()
        if project is None or str(project) in ("", "???"):
            raise AistudioError("data.project is not set — pass the folder holding dataset.json: data.project=/path")
        self.project_path = Path(str(project)).expanduser()
        self._project: Project | None = None
        self.dataset_factory = dataset
        self.task = task
        self.annotations = annotations
        self.split_index = int(split_index)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.auto_workers = num_workers == "auto"  # shared out between DDP processes once a trainer is known
        self.num_workers = default_num_workers() if self.auto_workers else int(num_workers)
        self.channels = int(channels)
        self.image_size = image_size
        self.mean, self.std = mean, std
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.collate_fn = collate_fn
        self.check_images = check_images
        self.pin_memory = pin_memory
        self.persistent_workers = bool(persistent_workers)
        self.prefetch_factor = int(prefetch_factor)
        if self.prefetch_factor < 1:
            raise AistudioError(f"data.prefetch_factor={prefetch_factor}: takes a number of batches, at least 1")
        self.drop_last = drop_last
        self.horizontal_flip = float(horizontal_flip)
        self.seed = int(seed)
        self._datasets: dict[str, Any] = {}
        self.test_split = "test"  # the split the test loop runs on (eval.py split=val evaluates val)
        self.normalize_on_device = bool(normalize_on_device)
        self.reuse_batch_memory = bool(reuse_batch_memory)
        self.pixel_scaling: PixelScaling | None = None  # set by setup() when the loaders can hand over uint8
        self._uint8_transforms: dict[str, Any] | None = None
        self._uint8_datasets: dict[str, Any] = {}
        # None: uint8 batches for the loaders a running Trainer asks for (it applies on_after_batch_transfer);
        # loaders taken by hand get the whole pipeline unless this is True
        self.uint8_batches: bool | None = None
        self.channels_last_batches = False  # set by SpeedSettings for a channels-last network

    @property
    def project(self) -> Project:
        """Validated once, before any model is built (all problems raised together)."""
        if self._project is None:
            self._project = load_and_report(self.project_path, task=self.annotations or self.task,
                                            split_index=self.split_index,
                                            check_images=self.check_images)
        return self._project

    def use_project(self, project: Project) -> None:
        """Adopt the project train.py already validated (before its heavy imports) instead of loading it again."""
        self._project = project

    @property
    def num_classes(self) -> int:
        return self.project.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.project.classes)

    def has_split(self, name: str) -> bool:
        return bool(self.project.split(self.test_split if name == "test" else name))

    def setup(self, stage: str | None = None) -> None:
        transforms = {"train": self.train_transform, "val": self.eval_transform, "test": self.eval_transform}
        sources = {"train": "train", "val": "val", "test": self.test_split}
        for split, transform in transforms.items():
            if split not in self._datasets:
                self._datasets[split] = self.dataset_factory(self.project.split(sources[split]), transform,
                                                             self.channels, project=self.project)
        if self._uint8_transforms is None:
            self._uint8_transforms = self._split_normalisation()

    def _split_normalisation(self) -> dict[str, Any]:
        """The loaders' pipelines without their final Normalize/ToFloat, by split, when
        ``normalize_on_device`` and both pipelines end in the same one (see :mod:`aistudio.data.pixel_scaling`);
        :attr:`pixel_scaling` is that step, which :meth:`on_after_batch_transfer` applies on the device.
        Empty: normalisation stays in the loaders."""
        if not self.normalize_on_device:
            return {}
        # stacked batches (the default collate) leave the loaders channels last: one memcpy per image
        hwc = self.collate_fn is None
        train, train_scaling = split_scaling(self.train_transform, self.channels, hwc)
        evaluation, eval_scaling = split_scaling(self.eval_transform, self.channels, hwc)
        if train_scaling is None or train_scaling != eval_scaling:
            log.debug("normalisation stays in the loaders: the train and eval pipelines do not both end in the "
                      "same Normalize/ToFloat + ToTensorV2")
            return {}
        self.pixel_scaling = train_scaling
        return {"train": train, "val": evaluation, "test": evaluation}

    def _loader_dataset(self, split: str) -> Any:
        """``split``'s dataset as its loader serves it: with the pipeline that hands over uint8 when the
        batches will be normalised on the device (a running Trainer asks for the loader, or ``uint8_batches``)."""
        dataset = self._datasets[split]
        uint8 = self.uint8_batches if self.uint8_batches is not None else self._trainer_running()
        if not uint8 or not self._uint8_transforms:
            return dataset
        if split not in self._uint8_datasets:
            served = copy.copy(dataset)  # shares the records
            served.transform = self._uint8_transforms[split]
            self._uint8_datasets[split] = served
        return self._uint8_datasets[split]

    def _trainer_running(self) -> bool:
        """Whether a Trainer is running a stage now (it asks for its loaders then, and applies
        :meth:`on_after_batch_transfer` to their batches); a loader taken by hand, even after a fit, is not."""
        from lightning.pytorch.trainer.states import TrainerStatus

        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.state.status == TrainerStatus.RUNNING

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """A batch stacked into a worker's reused shared memory without its token (its memory goes back to the
        worker once the batch is dropped: see :mod:`aistudio.data.batch_ring`); any other batch as it is."""
        return take_token(batch)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """The batch's uint8 images (its first element: a tensor, or a list for detection) to the network's
        input, on the device they were just copied to; the rest of the batch, and float images, as they are."""
        if self.pixel_scaling is None or not isinstance(batch, (tuple, list)) or not batch:
            return batch
        return type(batch)([self.pixel_scaling(batch[0], self.channels_last_batches), *batch[1:]])

    def eval_dataset(self, split: str) -> Any:
        """``split`` with the whole validation pipeline, normalisation included (what export checks its
        parity on and the example panels draw): it is read directly, not through the Trainer's loaders."""
        return self.dataset_factory(self.project.split(split), self.eval_transform, self.channels, project=self.project)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        import torch

        self.setup()
        pin = torch.cuda.is_available() if self.pin_memory == "auto" else bool(self.pin_memory)
        drop_last = self.drop_last and split == "train"
        trainer = getattr(self, "trainer", None)
        if split == "train" and self.batch_size > 1 and self._images_per_rank(split, trainer) % self.batch_size == 1:
            # a last batch of one image breaks BatchNorm in training mode; skip it instead of crashing
            drop_last = True
        # training: order and augmentation seeds from (seed, epoch) alone, so a resumed run sees
        # exactly what the uninterrupted run would have seen (see aistudio/data/sampling.py)
        dataset = self._loader_dataset(split)
        sampler = self._sampler(dataset, shuffle)
        if self.auto_workers and trainer is not None and trainer.num_devices > 1:  # this machine's DDP processes
            self.num_workers = default_num_workers(trainer.num_devices)
        if self.num_workers > 0:
            reap_workers_at_exit()  # they ignore SIGTERM: see init_worker
            one_opencv_thread()
        collate_fn = self.collate_fn
        if self._reuses_batch_memory(dataset, split):
            processes = trainer.num_devices if trainer is not None else 1
            collate_fn = ring_for_loader(self.num_workers, self.prefetch_factor, processes)
            log.debug("%s loader: %d worker(s) stack batches into shared memory they reuse (data.reuse_batch_memory)",
                     split, self.num_workers)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            pin_memory=pin,
            collate_fn=collate_fn,
            drop_last=drop_last,
            worker_init_fn=init_worker if self.num_workers > 0 else None,
        )

    def _reuses_batch_memory(self, dataset: Any, split: str) -> bool:
        """Whether ``split``'s workers stack batches into memory they reuse (:mod:`aistudio.data.batch_ring`):
        stacked uint8 batches that a running Trainer receives (its ``on_before_batch_transfer`` hands the memory
        back) from forked workers (the release pipes are inherited)."""
        import multiprocessing

        start_method = multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]
        return (self.reuse_batch_memory and self.collate_fn is None and self.num_workers > 0
                and dataset is not self._datasets[split] and start_method == "fork")

    def _sampler(self, dataset: Any, shuffle: bool) -> Any:
        """Training: the (seed, epoch) order, sharded over DDP ranks. Evaluation: the split in order,
        each image on one rank only under DDP (:class:`EvalShardSampler`), so no image is scored twice."""
        if shuffle:
            return EpochShuffleSampler(dataset, seed=self.seed, batch_size=self.batch_size)
        return EvalShardSampler(dataset) if distributed_world()[0] > 1 else None

    def _images_per_rank(self, split: str, trainer: Any) -> int:
        """The images one process trains on per epoch: under DDP its shard, padded to the same size on every
        rank (as the epoch sampler shards), not the whole split."""
        replicas = max(1, int(getattr(trainer, "world_size", 1) or 1)) if trainer is not None else 1
        return -(-len(self._datasets[split]) // replicas)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
