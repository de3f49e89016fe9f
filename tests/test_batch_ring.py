"""data.reuse_batch_memory: DataLoader workers stack batches into shared memory they reuse, the main process
maps each segment once, and hands a segment back only once it has dropped every tensor of the batch in it.
Real worker processes throughout; a batch must equal what default_collate makes of the same samples."""

from __future__ import annotations

import albumentations as A
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import DataLoader, Dataset, default_collate

from aistudio.data import batch_ring
from aistudio.data.batch_ring import BatchRing, RingToken, _layout, _live_rings, ring_for_loader, take_token
from aistudio.data.classification import ClassificationDataset
from aistudio.data.datamodule import ProjectDataModule


class Numbered(Dataset):
    """Sample i: an HWC uint8 image filled with i % 256, its label i, and (``masks``) an int64 mask of i."""

    def __init__(self, size: int = 50, masks: bool = False):
        self.size, self.masks = size, masks

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple:
        image = torch.full((6, 5, 3), index % 256, dtype=torch.uint8)
        return (image, torch.full((6, 5), index, dtype=torch.int64)) if self.masks else (image, index)


def loader(ring: BatchRing, dataset: Dataset, workers: int = 2, persistent: bool = True) -> DataLoader:
    return DataLoader(dataset, batch_size=8, num_workers=workers, collate_fn=ring, persistent_workers=persistent)


def expected(dataset: Dataset, batch: list) -> list:
    """default_collate of the samples a batch holds (identified by their first pixel)."""
    indices = [int(image[0, 0, 0]) for image in batch[0]]
    return list(default_collate([dataset[i] for i in indices]))


@pytest.mark.parametrize("masks", [False, True], ids=["image + label", "image + mask"])
def test_batches_equal_default_collate_and_reuse_a_few_segments(masks):
    dataset = Numbered(masks=masks)
    ring = ring_for_loader(workers=2, prefetch_factor=2)
    seen: list[tuple[int, int | None]] = []
    for _epoch in range(3):
        for batch in loader(ring, dataset):
            token = batch[-1]
            assert isinstance(token, RingToken) and token.ring == ring.id
            seen.append((token.worker, token.slot))
            batch = take_token(batch)
            reference = expected(dataset, batch)
            assert len(batch) == len(reference)
            for got, want in zip(batch, reference):
                assert got.dtype == want.dtype and torch.equal(got, want)
    assert None not in {slot for _, slot in seen}  # every batch went into a ring segment
    assert {worker for worker, _ in seen} == {0, 1}
    for worker in (0, 1):
        slots = [slot for w, slot in seen if w == worker]
        assert len(set(slots)) <= ring.slots < len(slots)  # 3 epochs of batches in at most `slots` segments


def kept_batches_survive(ring: BatchRing, persistent: bool) -> tuple[list, list]:
    """Iterate 3 epochs keeping a one-image view of each epoch's first 3 batches (a user's slice of a batch)
    and a clone of what it held; return both."""
    kept, copies = [], []
    for _epoch in range(3):
        for number, batch in enumerate(loader(ring, Numbered(size=64), persistent=persistent)):
            images = take_token(batch)[0]
            if number < 3:
                kept.append(images[:1])
                copies.append(images[:1].clone())
    return kept, copies


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent workers", "new workers each epoch"])
def test_a_batch_the_caller_keeps_is_never_overwritten(persistent):
    """New workers each epoch: a later generation must ignore the releases meant for its predecessors."""
    kept, copies = kept_batches_survive(ring_for_loader(workers=2, prefetch_factor=2), persistent)
    assert len(kept) == 9
    assert all(torch.equal(view, copy) for view, copy in zip(kept, copies))


class ReleasesAtOnce(BatchRing):
    """A ring that hands a segment back as soon as its batch arrives, ignoring who still holds it."""

    def _track(self, token: RingToken, flat: torch.Tensor) -> None:
        self._release(token)


def test_the_kept_batch_check_fails_when_segments_come_back_too_early():
    ring = ReleasesAtOnce(workers=2, slots=4)
    _live_rings[ring.id] = ring
    kept, copies = [], []
    for number, batch in enumerate(loader(ring, Numbered(size=160))):
        images = take_token(batch)[0]
        if number < 3:
            kept.append(images[:1])
            copies.append(images[:1].clone())
    assert not all(torch.equal(view, copy) for view, copy in zip(kept, copies))


class CountsSegmentsReceived(BatchRing):
    """Counts the batches that brought their segment along (a file descriptor passed, the segment mapped)."""

    mapped_now = 0

    def receive(self, token: RingToken, layout, storage):
        self.mapped_now += storage is not None
        return super().receive(token, layout, storage)


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent workers", "new workers each epoch"])
def test_the_main_process_maps_each_segment_once_and_only_the_current_workers(persistent):
    """After its first batch a segment crosses as a number: 60 batches map at most `slots` segments per worker
    process, and the main process keeps the mappings of the current worker processes only."""
    ring = CountsSegmentsReceived(workers=2, slots=4)
    _live_rings[ring.id] = ring
    data_loader, tokens = loader(ring, Numbered(size=160), persistent=persistent), []  # 20 batches an epoch
    for _epoch in range(3):
        for batch in data_loader:
            tokens.append(batch[-1])
            assert len(take_token(batch)[0]) == 8
    generations = 1 if persistent else 3
    assert len(tokens) == 60 and None not in {token.slot for token in tokens}
    assert len({token.incarnation for token in tokens}) == 2 * generations
    assert 2 <= ring.mapped_now <= 2 * ring.slots * generations
    last = {token.worker: token.incarnation for token in tokens}
    assert {worker: incarnation for worker, (incarnation, _) in ring._mapped.items()} == last
    assert all(len(mappings) <= ring.slots for _, mappings in ring._mapped.values())


@pytest.mark.parametrize("spare_segments", [0, 2])
def test_a_small_dev_shm_keeps_room_for_the_batches_in_flight(monkeypatch, spare_segments):
    """/dev/shm (faked: free = a budget less what this worker's ring holds; workers are forked, so they see the
    fake) with room for the batches in flight and ``spare_segments`` more: each worker's ring stops there and
    the other batches go into fresh segments, every batch still default_collate's."""
    dataset = Numbered(size=160)
    ring = ring_for_loader(workers=2, prefetch_factor=2)
    layout = _layout([dataset[i] for i in range(8)])
    nbytes = layout[-1][2] + layout[-1][3]
    budget = (ring.in_flight + spare_segments) * nbytes
    monkeypatch.setattr(batch_ring, "shared_memory_free",
                        lambda: budget - sum(segment.numel() for segment in ring._segments))
    slots: dict[int, set] = {0: set(), 1: set()}
    for _epoch in range(2):
        for batch in loader(ring, dataset):
            slots[batch[-1].worker].add(batch[-1].slot)
            batch = take_token(batch)
            for got, want in zip(batch, expected(dataset, batch), strict=True):
                assert torch.equal(got, want)
    for used in slots.values():
        assert None in used  # fresh segments for what the ring could not hold
        assert used - {None} == set(range(spare_segments))  # the ring stopped at what /dev/shm could spare


def test_samples_it_cannot_stack_get_default_collate():
    ring = ring_for_loader(workers=2, prefetch_factor=2)
    ragged = [(torch.zeros(2 + i, 3), {"id": i}) for i in range(4)]
    with pytest.raises(RuntimeError):  # what default_collate says about ragged tensors, unchanged
        ring(ragged)
    dicts = [{"image": torch.zeros(2, 2), "label": i} for i in range(4)]
    out = ring(dicts)  # in the main process (no worker): default_collate, and a token for no segment
    assert out[-1].slot is None and torch.equal(out[0]["label"], torch.arange(4))
    batches = list(loader(ring, [(torch.zeros(3), "text") for _ in range(8)], workers=1))
    assert batches[0][-1].slot is None and list(batches[0][1]) == ["text"] * 8  # strings: default_collate's batch


@pytest.mark.parametrize("setting, workers, uint8, rings", [
    (True, 1, True, True),
    (False, 1, True, False),   # data.reuse_batch_memory=false
    (True, 0, True, False),    # no workers: nothing crosses processes
    (True, 1, False, False),   # a loader taken by hand: float batches, no Trainer to hand memory back
])
def test_the_loaders_reuse_batch_memory_only_where_the_trainer_hands_it_back(color_project, setting, workers,
                                                                            uint8, rings):
    pipeline = A.Compose([A.Resize(16, 16), A.Normalize(), ToTensorV2()])
    datamodule = ProjectDataModule(color_project, dataset=ClassificationDataset, batch_size=4, num_workers=workers,
                                   train_transform=pipeline, eval_transform=pipeline, reuse_batch_memory=setting)
    datamodule.uint8_batches = uint8
    train = datamodule.train_dataloader()
    assert isinstance(train.collate_fn, BatchRing) is rings
    batch = datamodule.on_before_batch_transfer(next(iter(train)), 0)
    assert len(batch) == 2 and batch[0].shape == ((4, 16, 16, 3) if uint8 else (4, 3, 16, 16))
    by_hand = ProjectDataModule(color_project, dataset=ClassificationDataset, batch_size=4, num_workers=0,
                                train_transform=pipeline, eval_transform=pipeline)
    val = datamodule.on_before_batch_transfer(next(iter(datamodule.val_dataloader())), 0)
    assert torch.equal(datamodule.on_after_batch_transfer(val, 0)[0], next(iter(by_hand.val_dataloader()))[0])
