"""How each task reads and checks its annotations in dataset.json: one small parser class per kind.

A task config names its parser under ``annotations`` (``conf/task/<name>.yaml``), for example::

    annotations:
      _target_: aistudio.data.annotation_parsers.ObjectAnnotations
      masks: true

and :mod:`aistudio.data.project` calls it for every image entry (and once per project), so the
validator itself knows nothing about labels, objects or masks: a new task is its module, its config
and its parser (a subclass of :class:`AnnotationParser`). Parsers keep no per-project state (one
instance serves every project of its task); what a project-level check finds is returned by
:meth:`AnnotationParser.check_project` and handed back to :meth:`AnnotationParser.check_files`.

No torch here: a dataset is validated before torch or Lightning is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from aistudio.data.annotations import fit_to_image, parse_objects
from aistudio.data.project import DatasetError, ImageRecord, UnreadableFile, decode_fully, header_size

Fail = Callable[[str], None]


class AnnotationParser:
    """One task's annotations: :meth:`parse` reads an image entry; the other hooks are optional."""

    def parse(self, where: str, entry: dict[str, Any], classes: list[str], fail: Fail) -> dict[str, Any] | None:
        """The :class:`~aistudio.data.project.ImageRecord` fields of one entry (a task's own data goes in
        ``extra``), or None after reporting every problem with ``fail("<where>: ...")``. A
        :class:`~pathlib.Path` value is a file relative to the dataset folder (or absolute): the
        validator resolves it."""
        raise NotImplementedError

    def check_project(self, raw: dict[str, Any], classes: list[str], source: Path, fail: Fail) -> Any:
        """Checks of the project-level keys of dataset.json (run when ``classes`` is valid); the result is
        handed to :meth:`check_files` for every entry."""
        return None

    def check_files(self, record: ImageRecord, image_size: tuple[int, int], full: bool,
                    checked: Any) -> tuple[str | None, str | None]:
        """(problem, warning) of the entry's own files, after its image passed (runs in worker threads or
        processes: return, never report). ``full``: decode them as training does; ``checked``: what
        :meth:`check_project` returned. A pass is cached (:mod:`aistudio.data.check_cache`) by the image's
        and ``mask``'s path, size and mtime, this parser's repr and ``checked``'s: a parser reading other
        files must show what they are in its repr."""
        return None, None

    def fit_to_image(self, where: str, record: ImageRecord, width: int, height: int, fail: Fail,
                     warn: Fail) -> ImageRecord:
        """The record with its geometry checked against (and fitted to) the image's real size."""
        return record

    def __repr__(self) -> str:
        arguments = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({arguments})"


class ClassLabels(AnnotationParser):
    """Classification: ``"label"``, a class name (or index), one per image."""

    def parse(self, where: str, entry: dict[str, Any], classes: list[str], fail: Fail) -> dict[str, Any] | None:
        label = entry.get("label")
        if label is None:
            fail(f"{where}: 'label' is missing — classification needs one class per image")
            return None
        if isinstance(label, int) and not isinstance(label, bool):
            if 0 <= label < len(classes):
                return {"label": label}
            fail(f"{where}: label index {label} is out of range for {len(classes)} classes")
            return None
        if str(label) in classes:
            return {"label": classes.index(str(label))}
        preview = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "")
        fail(f"{where}: label {label!r} is not one of the {len(classes)} classes ({preview}) — "
             "fix the label or add it to 'classes'")
        return None


class ObjectAnnotations(AnnotationParser):
    """Detection (and with ``masks`` instance segmentation): ``"objects"``, COCO boxes (+ segmentation)
    per image (see :mod:`aistudio.data.annotations`); boxes are fitted to the image's real size."""

    def __init__(self, masks: bool = False):
        self.masks = bool(masks)

    def parse(self, where: str, entry: dict[str, Any], classes: list[str], fail: Fail) -> dict[str, Any] | None:
        objects = parse_objects(where, entry.get("objects"), classes, self.masks, fail)
        return None if objects is None else {"objects": tuple(objects)}

    def fit_to_image(self, where: str, record: ImageRecord, width: int, height: int, fail: Fail,
                     warn: Fail) -> ImageRecord:
        if not record.objects:
            return record
        return replace(record, objects=tuple(fit_to_image(where, list(record.objects), width, height, fail, warn)))


class SemanticMasks(AnnotationParser):
    """Semantic segmentation: ``"mask"``, a label image per image (a class per pixel), and the project's
    ``ignore_index`` / ``mask_values`` (checked once; ``check_images=full`` checks every mask's pixel
    values with the same :class:`~aistudio.data.masks.MaskClasses` training uses)."""

    def parse(self, where: str, entry: dict[str, Any], classes: list[str], fail: Fail) -> dict[str, Any] | None:
        mask = entry.get("mask")
        if not isinstance(mask, str) or not mask:
            fail(f"{where}: 'mask' (the label image path, class index per pixel) is missing")
            return None
        return {"mask": Path(mask)}

    def check_project(self, raw: dict[str, Any], classes: list[str], source: Path, fail: Fail) -> Any:
        """The project's :class:`~aistudio.data.masks.MaskClasses` (None when its keys are wrong)."""
        from aistudio.data.masks import MaskClasses

        ignore_index = raw.get("ignore_index", 255)
        if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
            fail(f"'ignore_index' must be an integer pixel value (default 255), got {ignore_index!r}")
            return None
        try:
            return MaskClasses(len(classes), raw.get("mask_values"), ignore_index, source)
        except DatasetError as err:
            for problem in err.problems:
                fail(problem)
        except (TypeError, ValueError):
            fail(f"'mask_values' must be a list of integer pixel values, one per class, got "
                 f"{raw.get('mask_values')!r}")
        return None

    def check_files(self, record: ImageRecord, image_size: tuple[int, int], full: bool,
                    checked: Any) -> tuple[str | None, str | None]:
        mask, mask_classes = record.mask, checked
        if mask is None:
            return None, None
        if not mask.is_file():
            return f"mask file not found at {mask} — fix 'mask' or remove the entry", None
        try:
            mask_size = header_size(mask)
            raw = decode_fully(mask, "mask") if full else None
        except UnreadableFile as err:
            return f"unreadable mask {mask.name} ({err}) — replace it or remove the entry", None
        if mask_size != image_size:
            return (f"mask {mask.name} is {mask_size[0]}x{mask_size[1]} but the image is "
                    f"{image_size[0]}x{image_size[1]} — masks must have their image's size"), None
        if raw is None or mask_classes is None:
            return None, None
        try:
            unlisted = mask_classes.unlisted(raw, mask)
        except DatasetError as err:
            return f"mask {mask.name}: {err.problems[0]}", None
        if not unlisted:
            return None, None
        if mask_classes.mask_values is None:
            return f"mask {mask.name}: {mask_classes.not_classes(unlisted)}", None
        return None, (f"mask {mask.name} has pixel value(s) {unlisted[:10]} not in mask_values "
                      f"{mask_classes.mask_values}: training ignores those pixels (ignore_index "
                      f"{mask_classes.ignore_index}) — list them in mask_values if they are classes")
