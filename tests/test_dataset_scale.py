"""Dataset scale: the synthetic project generator, the image check cache, check_images=off, progress.

Small real projects only: the thresholds (progress, process pool) are lowered instead of writing 100k
files; the speed targets are scripts/bench/dataset_scale.py's.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aistudio.data import file_checks
from aistudio.data.check_cache import CheckCache
from aistudio.data.images import ImageReadError
from aistudio.data.project import DatasetError, load_project
from aistudio.data.synthetic import write_synthetic_project
from tests.helpers import ROOT, edit_dataset, run_train

LOGGER = "aistudio.data.datamodule"


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "checks"
    monkeypatch.setenv("AISTUDIO_CACHE_DIR", str(path))
    return path


@pytest.fixture()
def checked(monkeypatch) -> list[str]:
    """The image files each load really checked (a cache hit checks none)."""
    files: list[str] = []
    real = file_checks.check_one

    def counting(record, *args):
        files.append(Path(record.path).name)
        return real(record, *args)

    monkeypatch.setattr(file_checks, "check_one", counting)
    return files


@pytest.fixture()
def synthetic(tmp_path) -> Path:
    return write_synthetic_project(tmp_path / "synthetic", 40, classes=4, size=8).parent


def cache_lines(caplog) -> list[str]:
    """The log's 'N of M image checks from the check cache' lines."""
    return [r.getMessage() for r in caplog.records if "image checks from the check cache" in r.getMessage()]


def test_synthetic_project_loads_with_distinct_files_classes_and_splits(tmp_path, cache_dir):
    path = write_synthetic_project(tmp_path / "p", 200, classes=5, size=12)
    project = load_project(path.parent)
    assert len(project.images) == 200 and project.classes == [f"class_{k:03d}" for k in range(5)]
    assert [len(project.split(s)) for s in ("train", "val", "test")] == [160, 20, 20]
    assert project.class_counts("train") == [32] * 5
    assert {(r.width, r.height) for r in project.images} == {(12, 12)}
    contents = {hashlib.sha256(r.file.read_bytes()).hexdigest() for r in project.images}
    assert len(contents) == 200  # every file differs

    from aistudio.data.images import read_image

    red_class = read_image(project.images[0].file).reshape(-1, 3)[2:].mean(axis=0)  # class 0: a red hue
    assert red_class[0] > red_class[1] + 60 and red_class[0] > red_class[2] + 60

    again = write_synthetic_project(tmp_path / "again", 200, classes=5, size=12)
    assert (again.parent / project.images[7].entry).read_bytes() == project.images[7].file.read_bytes()


def test_listing_without_files_loads_only_with_check_images_off(tmp_path, cache_dir):
    path = write_synthetic_project(tmp_path / "listing", 500, files=False)
    assert not (path.parent / "images").exists()
    project = load_project(path.parent, check_images="off")
    assert len(project.images) == 500 and not cache_dir.exists()  # nothing checked, nothing cached
    with pytest.raises(DatasetError) as info:
        load_project(path.parent, check_images="none")
    assert len(info.value.problems) == 500 and "images[0] (images/000/0000/0000000.png)" in info.value.problems[0]


def test_cli_writes_a_synthetic_project(tmp_path, cache_dir, capsys):
    from aistudio.cli.main import main

    assert main(["synthetic", str(tmp_path / "cli"), "--images", "30", "--classes", "3", "--size", "6"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["validate", str(tmp_path / "cli")]) == 0
    assert "OK — 3 classes, 30 images" in capsys.readouterr().out
    assert main(["synthetic", str(tmp_path / "bad"), "--images", "0"]) == 1


def test_second_load_comes_from_the_cache(synthetic, cache_dir, checked, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    first = load_project(synthetic)
    assert len(checked) == 40 and not cache_lines(caplog)
    assert len(list(cache_dir.glob("*.json"))) == 1
    checked.clear()
    second = load_project(synthetic)
    assert checked == [] and "40 of 40 image checks from the check cache" in cache_lines(caplog)[0]
    assert [(r.path, r.width, r.height, r.split, r.label) for r in second.images] == [
        (r.path, r.width, r.height, r.split, r.label) for r in first.images]
    load_project(synthetic, check_images="full")  # a header check does not answer a full one ...
    assert len(checked) == 40
    checked.clear()
    load_project(synthetic)  # ... but a full one answers a header one
    assert checked == []


def test_a_changed_or_replaced_file_is_checked_again(synthetic, cache_dir, checked):
    load_project(synthetic)
    project = load_project(synthetic)
    touched, broken = project.images[3].file, project.images[5].file
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    broken.write_bytes(b"not an image any more")
    checked.clear()
    with pytest.raises(DatasetError) as info:
        load_project(synthetic)
    assert sorted(checked) == sorted([touched.name, broken.name])
    assert len(info.value.problems) == 1 and f"images[5] ({project.images[5].entry})" in info.value.problems[0]
    assert "unreadable image" in info.value.problems[0]
    checked.clear()
    with pytest.raises(DatasetError):
        load_project(synthetic)  # a failed check is never cached
    assert checked == [broken.name]


def test_a_changed_declared_size_is_checked_again(synthetic, cache_dir, checked):
    load_project(synthetic)
    edit_dataset(synthetic, lambda d: d["images"][2].update(width=9))
    checked.clear()
    with pytest.raises(DatasetError, match="declared size 9x8 but the file is 8x8"):
        load_project(synthetic)
    assert len(checked) == 1


def test_a_corrupt_or_foreign_cache_file_is_ignored(synthetic, cache_dir, checked, caplog):
    load_project(synthetic)
    (cache_file,) = cache_dir.glob("*.json")
    for damage in (b"{not json", b'{"format": 1, "entries": []}', json.dumps(
            {**json.loads(cache_file.read_text()), "dataset": "/elsewhere/dataset.json"}).encode()):
        cache_file.write_bytes(damage)
        checked.clear()
        assert len(load_project(synthetic).images) == 40
        assert len(checked) == 40
    data = json.loads(cache_file.read_text())  # rewritten whole
    first = next(iter(data["entries"]))
    data["entries"][first] = ["header", "not a number"]
    cache_file.write_text(json.dumps(data))
    checked.clear()
    load_project(synthetic)
    assert len(checked) == 1


def test_an_unwritable_cache_dir_is_a_warning(synthetic, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("AISTUDIO_CACHE_DIR", str(blocker / "checks"))  # cannot be created, even by root
    caplog.set_level(logging.INFO, LOGGER)
    assert len(load_project(synthetic).images) == 40
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "cannot write the image check cache" in warning.getMessage() and "AISTUDIO_CACHE_DIR" in warning.getMessage()


def _mask_project(root: Path, mask: np.ndarray, classes: list[str], **extra) -> Path:
    import cv2

    from aistudio.data.project import write_project

    root.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "image.png"), np.zeros((*mask.shape, 3), np.uint8))
    cv2.imwrite(str(root / "mask.png"), mask)
    entry = {"file": "image.png", "mask": "mask.png"}
    write_project(root, classes, [{**entry, "split": ["train"]}, {**entry, "split": ["val"]}], **extra)
    return root


def test_changed_mask_settings_invalidate_the_cache(tmp_path, cache_dir, checked):
    raw = np.array([[0, 128, 7, 7]] * 4, np.uint8)
    root = _mask_project(tmp_path / "masks", raw, ["background", "cell"], mask_values=[0, 128])
    first = load_project(root, task="semantic_segmentation", check_images="full")
    assert "[7] not in mask_values" in first.warnings[0]
    checked.clear()
    again = load_project(root, task="semantic_segmentation", check_images="full")
    assert checked == [] and again.warnings == first.warnings  # the warning comes back from the cache
    edit_dataset(root, lambda d: d.update(mask_values=[0, 7]))
    changed = load_project(root, task="semantic_segmentation", check_images="full")
    assert len(checked) == 2 and "[128] not in mask_values" in changed.warnings[0]

    identity = _mask_project(tmp_path / "identity", np.array([[0, 1, 9]], np.uint8), ["a", "b"], ignore_index=9)
    load_project(identity, task="semantic_segmentation", check_images="full")
    edit_dataset(identity, lambda d: d.update(ignore_index=255))
    with pytest.raises(DatasetError, match=r"mask pixel value\(s\) \[9\] are not class indices"):
        load_project(identity, task="semantic_segmentation", check_images="full")
    # the mask file itself is part of each entry's key
    load_project(root, task="semantic_segmentation", check_images="full")
    (root / "mask.png").write_bytes(b"broken mask")
    with pytest.raises(DatasetError, match="unreadable mask mask.png"):
        load_project(root, task="semantic_segmentation", check_images="full")


def test_mask_classes_have_a_stable_repr():
    from aistudio.data.masks import MaskClasses

    assert repr(MaskClasses(2, [0, 255], 255)) == "MaskClasses(num_classes=2, mask_values=[0, 255], ignore_index=255)"


def test_check_images_off_touches_no_file_and_reading_names_the_missing_one(synthetic, cache_dir):
    from aistudio.data.classification import ClassificationDataset

    project = load_project(synthetic)
    for record in project.images:
        record.file.unlink()
    cache_before = sorted(p.read_bytes() for p in cache_dir.glob("*"))
    loaded = load_project(synthetic, check_images="off")
    assert len(loaded.images) == 40 and sorted(p.read_bytes() for p in cache_dir.glob("*")) == cache_before
    dataset = ClassificationDataset(loaded.split("train"))  # building a dataset reads no pixels
    assert len(dataset) == 32
    entry = loaded.split("train")[0]
    with pytest.raises(ImageReadError, match=rf"{entry.path}: cannot read this image \(No such file"):
        dataset[0]


@pytest.mark.slow
def test_training_with_check_images_off_names_a_missing_file(synthetic, tmp_path):
    gone = load_project(synthetic, check_images="off").split("val")[0]
    gone.file.unlink()
    result = run_train(["data=project", f"data.project={synthetic}", "data.check_images=off", "hardware=cpu",
                        "data.image_size=8", "data.batch_size=8", "trainer.max_epochs=1", "test=false", "plots=false",
                        "callbacks.progress_bar.kind=none", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode != 0
    assert f"{gone.path}: cannot read this image" in result.stderr and "restore the file" in result.stderr


def test_progress_is_logged_for_a_large_enough_project(synthetic, cache_dir, caplog):
    caplog.set_level(logging.INFO, LOGGER)
    load_project(synthetic, progress_from=10)
    lines = [r.getMessage() for r in caplog.records if "checked" in r.getMessage()]
    assert lines[-1].startswith(f"dataset {synthetic}: checked 40 of 40 images (100%")
    assert any("checking 40 images" in r.getMessage() for r in caplog.records)
    caplog.clear()
    load_project(synthetic, progress_from=10)  # from the cache: nothing to check, no progress
    assert not [r for r in caplog.records if "checked" in r.getMessage()]
    caplog.clear()
    write_synthetic_project(synthetic.parent / "small", 20, classes=2, size=4)
    load_project(synthetic.parent / "small")  # below the default threshold: silent
    assert not [r for r in caplog.records if "checked" in r.getMessage()]


def test_progress_is_a_bar_on_a_terminal(caplog):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    caplog.set_level(logging.INFO, LOGGER)
    progress = file_checks.Progress(100, "somewhere", 10, stream=stream)
    progress.start()
    for _ in range(4):
        progress.advance(25)
    progress.close()
    assert "checking images" in stream.getvalue() and not caplog.records


@pytest.mark.skipif(file_checks.cores() < 2, reason="the process pool needs 2 cores")
def test_process_pool_gives_the_threads_results(synthetic, tmp_path):
    """In a fresh (single-threaded) process, from PROCESSES_FROM entries the checks run in forked processes,
    with the same results in the same order."""
    broken = load_project(synthetic).images[17].file
    broken.write_bytes(b"garbage")
    script = ("import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
              "from aistudio.data import file_checks; from aistudio.data.project import DatasetError, load_project\n"
              "file_checks.PROCESSES_FROM = int(sys.argv[2])\n"
              "try:\n    load_project(sys.argv[1], progress_from=1)\n"
              "except DatasetError as err:\n    print(err.problems)\n")
    outputs = {}
    for mode, processes_from in (("processes", 1), ("threads", 10**9)):
        env = {**os.environ, "AISTUDIO_CACHE_DIR": str(tmp_path / f"checks-{mode}")}
        result = subprocess.run([sys.executable, "-c", script, str(synthetic), str(processes_from)], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=120)
        said = f"checking 40 images ({file_checks.cores()} processes)" if mode == "processes" else "threads)"
        assert said in result.stderr, result.stderr
        assert "process pool failed" not in result.stderr, result.stderr
        outputs[mode] = result.stdout
    assert outputs["processes"] == outputs["threads"] and "images[17]" in outputs["threads"]


def test_cache_file_is_named_by_the_dataset_path(synthetic, cache_dir):
    cache = CheckCache(synthetic / "dataset.json", "context")
    assert cache.path.parent == cache_dir
    assert cache.path != CheckCache(synthetic.parent / "other" / "dataset.json", "context").path
