"""dataset.json: load a project folder and validate ALL of it up front.

A project is a folder holding ``dataset.json``::

    {
      "version": 1,
      "classes": ["cat", "dog"],                       # class index = position in this list
      "split_schemes": ["holdout", "fold-1-of-5"],     # optional names, one per split column
      "images": [
        {"file": "images/cat/001.jpg",                 # relative to the folder (or absolute)
         "width": 640, "height": 480,                  # optional; checked against the file
         "label": "cat",                               # classification: class name (or index)
         "objects": [{"class": "cat", "bbox": [x, y, w, h],       # detection (COCO boxes, pixels)
                      "segmentation": [[x1, y1, ...]] or RLE}],   # + instance segmentation
         "mask": "masks/001.png",                      # semantic segmentation: class index per pixel
         "split": ["train", "val"]},                   # one of train/val/test per split scheme
        ...
      ],
      "ignore_index": 255,                             # semantic masks: pixels to ignore (default 255)
      "mask_values": [0, 255]                          # optional: pixel value of each class, in order
    }

``data.split_index`` picks the split column. Every problem found is collected and raised together
as one :class:`DatasetError`, so a user fixes the file once instead of once per crash.

This module checks what every project shares (classes, files, splits, image sizes). How an entry's
annotations are read and checked (``label``, ``objects``, ``mask`` and the mask keys) is the task's
annotation parser (:mod:`aistudio.data.annotation_parsers`), named by the task config under
``annotations`` (``conf/task/<name>.yaml``); :func:`load_project` takes a task name (its config's
parser) or a parser. The known tasks are the files in ``conf/task/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aistudio import AistudioError, exception_chain, user_error, user_path
from aistudio.data.annotations import ObjectRecord

if TYPE_CHECKING:
    from aistudio.data.annotation_parsers import AnnotationParser

DATASET_FILE = "dataset.json"
SPLITS = ("train", "val", "test")
TASK_CONFIGS = Path(__file__).resolve().parents[2] / "conf" / "task"  # one file per task: its parser too
_EXAMPLES_PER_KIND = 5
log = logging.getLogger("aistudio.data.datamodule")  # the run log's name for dataset lines


class DatasetError(AistudioError):
    """One or more problems in a dataset.json project, all reported at once."""

    def __init__(self, source: str | Path, problems: list[str] | None = None, outcome: str = "nothing was trained"):
        self.outcome = outcome  # what the program using the project did not do (eval: "nothing was evaluated")
        if problems is None:  # torch re-raising it from a DataLoader worker: the message alone
            message = str(source)
            if "Original Traceback" in message:
                message = message.split("Original Traceback", 1)[1].split("DatasetError: ", 1)[-1].strip()
            self.source, self.problems = "", [message]
            super().__init__(message)
            return
        self.source = str(source)
        self.problems = problems
        super().__init__(self._summary())

    def _summary(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s) found, {self.outcome}:"]
        shown = self.problems[:30]
        lines += [f"  - {p}" for p in shown]
        if len(self.problems) > len(shown):
            lines.append(f"  ... and {len(self.problems) - len(shown)} more (the run log lists every one)")
        return "\n".join(lines)

    def saying(self, outcome: str) -> DatasetError:
        """The same problems, told by another program: ``saying("nothing was exported")``."""
        return DatasetError(self.source, self.problems, outcome) if self.source else self


@dataclass(frozen=True)
class ImageRecord:
    """One validated image entry, with its split already chosen by ``split_index``."""

    index: int
    file: Path
    split: str
    label: int | None = None
    width: int | None = None
    height: int | None = None
    entry: str = ""  # the 'file' value as written in dataset.json, for messages
    objects: tuple[ObjectRecord, ...] = ()
    mask: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # a task's own annotations


@dataclass
class Project:
    """A validated dataset.json project; ``warnings`` lists what was repaired (e.g. dropped boxes)."""

    root: Path
    classes: list[str]
    images: list[ImageRecord]
    split_index: int
    split_schemes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ignore_index: int = 255
    mask_values: list[int] | None = None
    source: Path | None = None  # the dataset.json file
    checksum: str = ""  # sha256 of dataset.json's bytes: which version of the dataset a result is on

    def fingerprint(self) -> dict[str, Any]:
        """What a result records about the data it came from (run.json, eval results)."""
        return {"file": str(self.source) if self.source else str(self.root / DATASET_FILE),
                "sha256": self.checksum, "split_index": self.split_index,
                "split_scheme": self.split_schemes[self.split_index]
                if self.split_index < len(self.split_schemes) else None}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> list[ImageRecord]:
        return [record for record in self.images if record.split == name]

    def class_counts(self, split: str = "train") -> list[int]:
        """Examples per class in ``split``: images by label, plus objects by category (detection);
        semantic masks are not counted (their pixels would be)."""
        counts: Counter[int] = Counter()
        for record in self.split(split):
            if record.label is not None:
                counts[record.label] += 1
            counts.update(o.category for o in record.objects)
        return [counts.get(i, 0) for i in range(self.num_classes)]


def load_and_report(path: str | Path, *, task: str | AnnotationParser = "classification", split_index: int = 0,
                    check_images: str = "header") -> Project:
    """:func:`load_project`, then log what was repaired and the split sizes (what a run's log shows)."""
    project = load_project(path, task=task, split_index=split_index, check_images=check_images)
    for warning in project.warnings[:20]:
        log.warning("%s", warning)
    if project.warnings:
        log.warning("dataset %s: %d annotation(s) repaired or dropped (listed above, first 20)", path,
                    len(project.warnings))
    sizes = {s: len(project.split(s)) for s in SPLITS}
    log.info("dataset %s: %d classes, split %d -> train %d / val %d / test %d", path, project.num_classes,
             split_index, sizes["train"], sizes["val"], sizes["test"])
    return project


def project_from_config(data: dict[str, Any]) -> Project:
    """The validated project of a resolved ``data`` config (a built-in generator is materialised first).

    Needs no torch or Lightning, so a broken dataset.json is reported before any heavy import. The
    annotations are read by ``data.annotations`` (the task config's parser), else by ``data.task``'s."""
    source = data.get("project")
    if isinstance(source, dict) and "_target_" in source:
        from hydra.utils import instantiate

        source = instantiate(source)
    if source is None or str(source) in ("", "???"):
        raise AistudioError("data.project is not set — pass the folder holding dataset.json: data.project=/path")
    source = user_path(source)
    annotations = data.get("annotations")
    if isinstance(annotations, Mapping):  # the task's `annotations` node, not yet instantiated
        annotations = _instantiate_parser(annotations, "data.annotations")
    return load_and_report(source, task=annotations or data.get("task") or "classification",
                           split_index=int(data.get("split_index") or 0),
                           check_images=data.get("check_images") or "header")


def known_tasks() -> list[str]:
    """The task names: one config file each in ``conf/task/``."""
    return sorted(path.stem for path in TASK_CONFIGS.glob("*.yaml"))


def annotation_parser(task: str | AnnotationParser) -> AnnotationParser:
    """The parser a task's config names under ``annotations`` (a parser is returned as it is)."""
    if isinstance(task, str):
        return _task_parser(task)
    if callable(getattr(task, "parse", None)):
        return task
    raise AistudioError(f"task {task!r} is not one of {', '.join(known_tasks())} (nor an annotation parser)")


@cache
def _task_parser(task: str) -> AnnotationParser:
    from omegaconf import OmegaConf

    known = known_tasks()
    if task not in known:
        raise AistudioError(f"task {task!r} is not one of {', '.join(known)}" if known else
                            f"task {task!r}: no task configs found in {TASK_CONFIGS}")
    path = TASK_CONFIGS / f"{task}.yaml"
    node = OmegaConf.load(path).get("annotations")
    node = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
    if not isinstance(node, dict) or "_target_" not in node:
        raise AistudioError(f"{path}: no 'annotations' node with a _target_ — name the task's annotation "
                            "parser there (see aistudio/data/annotation_parsers.py)")
    return _instantiate_parser(node, f"task {task} annotations")


def _instantiate_parser(node: Mapping[str, Any], key: str) -> AnnotationParser:
    from hydra.utils import instantiate

    try:
        return instantiate(node)
    except Exception as err:  # noqa: BLE001 - Hydra wraps import and argument errors alike
        if user_error(err):
            raise user_error(err) from None
        cause = exception_chain(err)[-1]  # Hydra's wrapper says "Error in call to target": the cause says why
        raise AistudioError(f"{key}: cannot build the annotation parser {node.get('_target_')!r} "
                            f"({type(cause).__name__}: {str(cause).strip().splitlines()[0]}) — check its "
                            "_target_ and arguments in conf/task/") from None


def infer_task(path: str | Path) -> str:
    """The task a project's annotations are for: instance masks -> instance_segmentation, objects ->
    detection, a mask per image -> semantic_segmentation, else classification (an unreadable file:
    classification, and loading it reports the problem)."""
    try:
        raw = json.loads(dataset_file(path).read_text(encoding="utf-8"))
        images = [i for i in raw.get("images") or [] if isinstance(i, dict)]
    except (OSError, ValueError, AttributeError):
        return "classification"
    objects = [o for i in images for o in (i.get("objects") or []) if isinstance(o, dict)]
    if any(o.get("segmentation") for o in objects):
        return "instance_segmentation"
    if objects:
        return "detection"
    if any(i.get("mask") for i in images):
        return "semantic_segmentation"
    return "classification"


def dataset_file(path: str | Path) -> Path:
    """Accept a project folder or the dataset.json inside it."""
    path = Path(path).expanduser()
    return path if path.suffix == ".json" else path / DATASET_FILE


def load_project(path: str | Path, *, task: str | AnnotationParser = "classification", split_index: int = 0,
                 check_images: str = "header") -> Project:
    """Load and validate a project; raise :class:`DatasetError` listing every problem.

    ``task``: a task name (the annotation parser its ``conf/task/<name>.yaml`` names) or a parser.

    ``check_images``: ``header`` opens each image's header (fast: size and format, catches missing,
    empty and non-image files), ``full`` also decodes every image and mask exactly as training does
    (truncated files, mask pixel values that are not classes), ``none`` only checks that files exist.
    """
    json_path = dataset_file(path)
    if not json_path.parent.is_dir():
        raise DatasetError(json_path.parent, [
            "dataset folder not found — set data.project to a folder that holds dataset.json"])
    if not json_path.is_file():
        raise DatasetError(json_path, [
            "no dataset.json in this folder — create one (see README, 'dataset.json') or import a "
            "folder of class sub-folders with `aistudio import image-folder`"])
    try:
        content = json_path.read_bytes()
        raw = json.loads(content.decode("utf-8"))
    except json.JSONDecodeError as err:
        raise DatasetError(json_path, [
            f"not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} — fix the syntax"]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(json_path, [f"cannot be read: {err}"]) from None
    project = _Validator(json_path, raw, task, split_index, check_images).run()
    project.source, project.checksum = json_path, hashlib.sha256(content).hexdigest()
    return project


class _Validator:
    """Collects every problem of one dataset.json instead of stopping at the first."""

    def __init__(self, json_path: Path, raw: Any, task: str | AnnotationParser, split_index: int,
                 check_images: str):
        if check_images not in ("header", "full", "none"):
            raise AistudioError(f"data.check_images={check_images!r} — use header, full or none")
        self.parser = annotation_parser(task)
        self.json_path = json_path
        self.root = json_path.parent
        self.raw = raw
        self.split_index = split_index
        self.check_images = check_images
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.checked: Any = None  # what the parser's project-level check found (semantic: MaskClasses)

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def run(self) -> Project:
        raw = self.raw
        if not isinstance(raw, dict):
            raise DatasetError(self.json_path, ["the top level must be an object with 'classes' and 'images'"])
        classes = self._classes(raw.get("classes"))
        images = raw.get("images")
        if not isinstance(images, list) or not images:
            self.fail("'images' must be a non-empty list of image entries")
            images = []
        records = [r for i, entry in enumerate(images) if (r := self._image(i, entry, classes)) is not None]
        if classes:
            self.checked = self.parser.check_project(raw, classes, self.json_path, self.fail)
        records = self._check_files(records)
        if records and not self.problems:
            counts = Counter(r.split for r in records)
            for split in ("train", "val"):
                if counts[split] == 0:
                    self.fail(f"split_index {self.split_index} leaves the '{split}' split empty — "
                              f"mark some images '{split}' in that split column or choose another data.split_index")
        if self.problems:
            raise DatasetError(self.json_path, self.problems)
        schemes = raw.get("split_schemes") or []
        return Project(self.root, classes, records, self.split_index, list(schemes), self.warnings,
                       int(raw.get("ignore_index", 255)), raw.get("mask_values"))

    def _classes(self, classes: Any) -> list[str]:
        if not isinstance(classes, list) or not classes:
            self.fail("'classes' must be a non-empty list of class names")
            return []
        names = [str(c) for c in classes]
        duplicates = sorted(name for name, n in Counter(names).items() if n > 1)
        if duplicates:
            self.fail(f"'classes' lists {duplicates} more than once — class names must be unique")
        return names

    def _image(self, index: int, entry: Any, classes: list[str]) -> ImageRecord | None:
        where = f"images[{index}]"
        if not isinstance(entry, dict):
            self.fail(f"{where}: must be an object with 'file' and 'split'")
            return None
        file = entry.get("file")
        if not isinstance(file, str) or not file:
            self.fail(f"{where}: 'file' (the image path, relative to the dataset folder) is missing")
            return None
        where = f"{where} ({file})"
        ok = True
        split = self._split(where, entry.get("split"))
        ok &= split is not None
        annotations = self.parser.parse(where, entry, classes, self.fail)
        ok &= annotations is not None
        width, height = entry.get("width"), entry.get("height")
        for key, value in (("width", width), ("height", height)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                self.fail(f"{where}: '{key}' must be a positive integer (pixels), got {value!r}")
                ok = False
        if not ok:
            return None
        fields = {k: self._path(str(v)) if isinstance(v, Path) else v for k, v in (annotations or {}).items()}
        return ImageRecord(index, self._path(file), split, width=width, height=height, entry=file, **fields)

    def _path(self, file: str) -> Path:
        return Path(file) if os.path.isabs(file) else self.root / file

    def _split(self, where: str, split: Any) -> str | None:
        if isinstance(split, str):
            split = [split]  # shorthand for a single split scheme
        if not isinstance(split, list) or not split:
            self.fail(f"{where}: 'split' must be a list with one of {list(SPLITS)} per split scheme")
            return None
        bad = [s for s in split if s not in SPLITS]
        if bad:
            self.fail(f"{where}: split value(s) {bad} are not one of {list(SPLITS)}")
            return None
        if not 0 <= self.split_index < len(split):
            self.fail(f"{where}: data.split_index={self.split_index} is out of range — this entry has "
                      f"{len(split)} split scheme(s) (valid split_index: 0..{len(split) - 1})")
            return None
        return split[self.split_index]

    def _check_files(self, records: list[ImageRecord]) -> list[ImageRecord]:
        """Check image (and annotation) files in parallel, then fit annotations to the real image size."""
        if not records:
            return records
        workers = min(16, (os.cpu_count() or 1) * 4)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(self._check_file, records))
        checked = []
        for record, (problem, size, warning) in zip(records, results):
            where = f"images[{record.index}] ({record.entry})"
            if warning:
                self.warn(f"{where}: {warning}")
            if problem:
                self.fail(f"{where}: {problem}")
                continue
            size = size or ((record.width, record.height) if record.width and record.height else None)
            if size:
                record = self.parser.fit_to_image(where, record, size[0], size[1], self.fail, self.warn)
            checked.append(record)
        return checked

    def _check_file(self, record: ImageRecord) -> tuple[str | None, tuple[int, int] | None, str | None]:
        """(problem, size, warning) of one entry's files: header size, and with ``full`` the decode (and the
        parser's checks of its own files, e.g. mask values) training itself runs (one check, so what
        validates trains)."""
        if not record.file.is_file():
            return (f"image file not found at {record.file} — fix 'file' (paths are relative to the dataset "
                    "folder) or remove the entry"), None, None
        if self.check_images == "none":
            return None, None, None
        full = self.check_images == "full"
        try:
            size = header_size(record.file)
            if full:
                decode_fully(record.file, "image")
        except UnreadableFile as err:
            return f"unreadable image ({err}) — replace the file or remove the entry", None, None
        if (record.width, record.height) != (None, None) and (record.width, record.height) != size:
            return (f"declared size {record.width}x{record.height} but the file is {size[0]}x{size[1]} — "
                    "fix 'width'/'height'"), None, None
        problem, warning = self.parser.check_files(record, size, full, self.checked)
        if problem:
            return problem, None, None
        return None, size, warning


class UnreadableFile(Exception):
    """An image or label file that cannot be read (its message says why)."""


def decode_fully(path: Path, what: str) -> Any:
    """Decode exactly as training does (masks: their raw pixel values); raise UnreadableFile if it fails."""
    import cv2

    from aistudio.data.images import ImageReadError, decode

    try:
        if what == "mask":
            from aistudio.data.masks import read_mask

            return read_mask(path)
        return decode(path, cv2.IMREAD_UNCHANGED, what)
    except (ImageReadError, DatasetError) as err:
        raise UnreadableFile(str(err).split(": ", 1)[-1].split(" — ", 1)[0]) from None


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header (fast: catches missing, empty and non-image files)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UnreadableFile(f"{type(err).__name__}: {err}") from None


def write_project(root: str | Path, classes: list[str], images: list[dict[str, Any]],
                  split_schemes: list[str] | None = None, **extra: Any) -> Path:
    """Write a dataset.json atomically (used by importers and built-in datasets)."""
    from aistudio.runs.atomic import atomic_write_json

    path = dataset_file(root)
    data: dict[str, Any] = {"version": 1, "classes": classes}
    if split_schemes:
        data["split_schemes"] = split_schemes
    data.update(extra)
    data["images"] = images
    atomic_write_json(path, data)
    return path
