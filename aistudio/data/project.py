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
from collections.abc import Iterator, Mapping
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
CHECK_MODES = ("header", "full", "none", "off")  # data.check_images
_SPLIT_NAMES = {name: name for name in SPLITS}
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


class _NoExtra(Mapping):
    """The ``extra`` of a record without any: one shared, immutable, picklable empty mapping (a million
    records then carry no empty dict each)."""

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"

    def __reduce__(self) -> str:
        return "NO_EXTRA"  # unpickled as this module's NO_EXTRA (DataLoader workers, the check processes)


NO_EXTRA: Mapping[str, Any] = _NoExtra()


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One validated image entry, with its split already chosen by ``split_index``.

    Slotted, holding its image path as a string (``file`` builds the Path on access) and sharing one empty
    ``extra``: 100k records take about 40 MB instead of 87 MB (tracemalloc), and every DataLoader worker
    inherits them."""

    index: int
    path: str  # the image file: the dataset folder joined with 'file' (relative if the folder was given so)
    split: str
    label: int | None = None
    width: int | None = None
    height: int | None = None
    entry: str = ""  # the 'file' value as written in dataset.json, for messages
    objects: tuple[ObjectRecord, ...] = ()
    mask: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: NO_EXTRA, compare=False)  # a task's own annotations

    @property
    def file(self) -> Path:
        """The image file."""
        return Path(self.path)


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
                 check_images: str = "header", progress_from: int | None = None) -> Project:
    """Load and validate a project; raise :class:`DatasetError` listing every problem.

    ``task``: a task name (the annotation parser its ``conf/task/<name>.yaml`` names) or a parser.

    ``check_images``: ``header`` opens each image's header (fast: size and format, catches missing,
    empty and non-image files), ``full`` also decodes every image and mask exactly as training does
    (truncated files, mask pixel values that are not classes), ``none`` only checks that files exist,
    ``off`` touches no file (the listing is trusted: a missing or unreadable file fails when training
    reads it, naming the file). Passed ``header``/``full`` checks are cached
    (:mod:`aistudio.data.check_cache`): loading the same files again only stats them.

    ``progress_from``: entries to check before progress is shown (default
    :data:`aistudio.data.file_checks.PROGRESS_FROM`).
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
    project = _Validator(json_path, raw, task, split_index, check_images, progress_from).run()
    project.source, project.checksum = json_path, hashlib.sha256(content).hexdigest()
    return project


class _Validator:
    """Collects every problem of one dataset.json instead of stopping at the first."""

    def __init__(self, json_path: Path, raw: Any, task: str | AnnotationParser, split_index: int,
                 check_images: str, progress_from: int | None = None):
        if check_images not in CHECK_MODES:
            raise AistudioError(f"data.check_images={check_images!r} — use header, full, none or off")
        self.parser = annotation_parser(task)
        self.json_path = json_path
        self.root = json_path.parent
        self.prefix = os.path.join(str(self.root), "")  # the folder and a separator
        self.numbers: dict[Any, Any] = {}  # one int object per distinct width/height (JSON makes one per entry)
        self.progress_from = progress_from
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
        return Project(self.root, list(classes), records, self.split_index, list(schemes), self.warnings,
                       int(raw.get("ignore_index", 255)), raw.get("mask_values"))

    def _classes(self, classes: Any) -> list[str]:
        if not isinstance(classes, list) or not classes:
            self.fail("'classes' must be a non-empty list of class names")
            return []
        names = ClassNames(str(c) for c in classes)
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
        # what a record keeps is allocated anew, not taken from the parsed JSON: the JSON's memory is then
        # returned as a whole instead of staying pinned by one string per entry (100k entries: ~30 MB)
        path = self._path(file)
        if path is not file:
            file = path[len(self.prefix):]
        if width is not None:
            width, height = self.numbers.setdefault(width, width), self.numbers.setdefault(height, height)
        if not annotations:
            return ImageRecord(index, path, split, width=width, height=height, entry=file)
        for value in annotations.values():
            if isinstance(value, Path):  # a file of the entry's own (a mask): relative to the dataset folder
                annotations = {k: Path(self._path(str(v))) if isinstance(v, Path) else v
                               for k, v in annotations.items()}
                break
        return ImageRecord(index, path, split, width=width, height=height, entry=file, **annotations)

    def _path(self, file: str) -> str:
        """The file relative to the dataset folder (an absolute one as it is): a string, no Path per entry."""
        return file if os.path.isabs(file) else self.prefix + file

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
        return _SPLIT_NAMES[split[self.split_index]]  # one string object per split name for every record

    def _check_files(self, records: list[ImageRecord]) -> list[ImageRecord]:
        """Check image (and annotation) files, then fit annotations to the real image size."""
        if not records:
            return records
        results = self._file_results(records)
        checked = []
        for record, (problem, size, warning) in zip(records, results):
            if warning or problem:
                where = f"images[{record.index}] ({record.entry})"
                if warning:
                    self.warn(f"{where}: {warning}")
                if problem:
                    self.fail(f"{where}: {problem}")
                    continue
            size = size or ((record.width, record.height) if record.width and record.height else None)
            if size:
                record = self.parser.fit_to_image(f"images[{record.index}] ({record.entry})", record, size[0],
                                                  size[1], self.fail, self.warn)
            checked.append(record)
        return checked

    def _file_results(self, records: list[ImageRecord]) -> list[tuple[str | None, tuple[int, int] | None, str | None]]:
        """(problem, size, warning) per record: nothing opened with ``off``, passed checks from the cache."""
        mode = self.check_images
        if mode == "off":
            return [(None, None, None)] * len(records)
        from aistudio.data import file_checks

        source = str(self.json_path.parent)
        if mode == "none":
            return file_checks.check_all(records, mode, self.parser, self.checked, source, self.progress_from)
        from aistudio.data.check_cache import CheckCache

        cache = CheckCache(self.json_path, f"{self.parser!r}, {self.checked!r}")
        passed = cache.lookup(records, mode)  # (mode, size, warning) of the unchanged files' passed checks
        todo = [i for i, hit in enumerate(passed) if hit is None]
        results: list[Any] = [None if hit is None else (None, hit[1], hit[2]) for hit in passed]
        fresh = file_checks.check_all([records[i] for i in todo], mode, self.parser, self.checked, source,
                                      self.progress_from)
        for i, result in zip(todo, fresh):
            results[i] = result
            passed[i] = None if result[0] else (mode, result[1], result[2])
        if len(records) > len(todo):
            log.info("dataset %s: %d of %d image checks from the check cache (%s)", source,
                     len(records) - len(todo), len(records), cache.path)
        cache.save(passed)
        return results


class ClassNames(list):
    """The class names, with O(1) ``in`` and ``index`` (parsers look a label up per entry: 1M entries of
    1,000 classes would otherwise scan the list a million times)."""

    def __init__(self, names: Any = ()):
        super().__init__(names)
        self._positions: dict[str, int] = {}
        for position, name in enumerate(self):
            self._positions.setdefault(name, position)

    def __contains__(self, name: object) -> bool:
        return name in self._positions if isinstance(name, str) else super().__contains__(name)

    def index(self, name: Any, *args: Any) -> int:
        if isinstance(name, str) and not args and name in self._positions:
            return self._positions[name]
        return super().index(name, *args)


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
