"""What ``predict.py`` reads: one image, a folder of images (searched recursively), or the images of a
dataset.json project (all of them or one split), resolved and checked before torch is imported.

Each image gets the name outputs and messages use (its path relative to the folder or to dataset.json),
a unique output stem (that name without its suffix) and a COCO image id. Whether an image decodes is
not checked here: the prediction loop reports and skips each one that does not.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from aistudio import AistudioError
from aistudio.data.project import SPLITS, DatasetError, project_from_config

PREDICT_SPLITS = ("all", *SPLITS)
# what OpenCV decodes (aistudio.data.images); a folder's other files are not images to predict on
IMAGE_EXTENSIONS = (".bmp", ".dib", ".jpeg", ".jpg", ".jpe", ".jp2", ".png", ".webp", ".pbm", ".pgm", ".ppm",
                    ".pnm", ".tif", ".tiff")


@dataclass(frozen=True)
class InputImage:
    """One image to predict on."""

    file: Path  # where it is read from
    name: str  # how outputs and messages name it: relative to the input folder or dataset.json
    stem: str  # output file name without suffix, relative and unique within one prediction
    image_id: int  # COCO image id: the position in dataset.json + 1, else in sorted file order + 1


@dataclass
class PredictionInputs:
    source: Path  # the image, the folder, or the dataset.json file
    kind: str  # image | folder | dataset
    label: str  # the input's name in the default output folder
    split: str
    images: list[InputImage]
    ignored_files: int = 0  # files of a folder without an image extension

    def describe(self) -> dict[str, Any]:
        """summary.json's ``input``."""
        return {"path": str(self.source), "kind": self.kind, "split": self.split, "images": len(self.images),
                "ignored_files": self.ignored_files}


def resolve_inputs(value: Any, split: str, data_config: dict[str, Any], exclude: Path | None = None) -> PredictionInputs:
    """The images ``input=<value>`` names. ``data_config``: the run's (overridden) ``data`` config, whose
    annotation parser and ``split_index`` read a dataset.json; ``exclude``: a folder never listed (the
    output folder). A missing path, an empty folder or a dataset.json that does not validate is an
    :class:`AistudioError` naming the path and the fix."""
    if value is None or str(value) in ("", "???"):
        raise AistudioError("input= is required: an image, a folder of images, or a dataset.json (or the folder "
                            "holding one) — e.g. python predict.py run=latest input=photos/")
    if split not in PREDICT_SPLITS:
        raise AistudioError(f"split={split}: use one of {', '.join(PREDICT_SPLITS)}")
    from aistudio import user_path

    path = user_path(str(value))
    if not path.exists():
        raise AistudioError(f"input={value}: no such file or folder ({path}) — pass an image, a folder of images, "
                            "or a dataset.json (or the folder holding one)")
    if path.suffix.lower() == ".json" or (path.is_dir() and (path / "dataset.json").is_file()):
        return _dataset_inputs(path if path.is_file() else path / "dataset.json", split, data_config)
    if split != "all":
        raise AistudioError(f"split={split} applies to a dataset.json input, and {path} is not one — "
                            "leave split=all (the default)")
    if path.is_file():
        return PredictionInputs(path, "image", path.stem, "all", [InputImage(path, path.name, path.stem, 1)])
    files, ignored = _image_files(path, exclude)
    if not files:
        raise AistudioError(f"input={value}: no images in {path} or its sub-folders (looked for "
                            f"{', '.join(IMAGE_EXTENSIONS)}) — pass a folder that holds images, or one image")
    names = [f.relative_to(path).as_posix() for f in files]
    stems = unique_stems(names)
    images = [InputImage(f, n, s, i + 1) for i, (f, n, s) in enumerate(zip(files, names, stems))]
    return PredictionInputs(path, "folder", path.name, "all", images, ignored)


def _image_files(folder: Path, exclude: Path | None) -> tuple[list[Path], int]:
    """Image files under ``folder`` (hidden files and folders skipped), sorted by relative path; and how
    many other files there were."""
    skip = exclude.resolve() if exclude is not None else None
    found, ignored = [], 0
    for directory, subdirs, names in os.walk(folder):
        here = Path(directory)
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and (here / d).resolve() != skip)
        for name in names:
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                found.append(here / name)
            else:
                ignored += 1
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix()), ignored


def _dataset_inputs(json_path: Path, split: str, data_config: dict[str, Any]) -> PredictionInputs:
    """The images of a dataset.json, validated by the run's own task parser. Image files are only checked
    to exist: one that does not decode is reported and skipped like any other input."""
    try:
        project = project_from_config({**data_config, "project": str(json_path), "check_images": "none"})
    except DatasetError as err:  # its own summary says "nothing was trained"
        shown = "\n".join(f"  - {p}" for p in err.problems[:30])
        more = f"\n  ... and {len(err.problems) - 30} more" if len(err.problems) > 30 else ""
        raise AistudioError(f"input={json_path}: {len(err.problems)} problem(s) found reading it for a "
                            f"{data_config.get('task') or 'this'} run, nothing was predicted:\n{shown}{more}") from None
    records = project.images if split == "all" else project.split(split)
    if not records:
        raise AistudioError(f"split={split} is empty in {json_path} with data.split_index={project.split_index} — "
                            "predict on split=all or another split, or choose another data.split_index")
    names = [_entry_name(r.entry, r.file) for r in records]
    stems = unique_stems(names)
    images = [InputImage(r.file, n, s, r.index + 1) for r, n, s in zip(records, names, stems)]
    label = json_path.parent.name if json_path.name == "dataset.json" else json_path.stem
    return PredictionInputs(json_path, "dataset", label, split, images)


def _entry_name(entry: str, file: Path) -> str:
    """A dataset entry's name for outputs: its relative path as written, never leaving the output folder."""
    parts = [p for p in PurePosixPath(entry.replace("\\", "/")).parts if p not in ("..", ".")]
    if not parts or os.path.isabs(entry) or PurePosixPath(entry).is_absolute():
        return file.name
    return "/".join(parts)


def unique_stems(names: list[str]) -> list[str]:
    """Output stems of relative names: the name without its suffix (``a/b.jpg`` -> ``a/b``); names that
    would share one keep their suffix (``a.jpg``, ``a.png`` -> ``a.jpg``, ``a.png``), then get a number."""
    stems = [str(PurePosixPath(n).with_suffix("")) if PurePosixPath(n).suffix else n for n in names]
    counts = Counter(stems)
    stems = [n if counts[s] > 1 else s for n, s in zip(names, stems)]
    used: set[str] = set()
    unique = []
    for stem in stems:
        candidate, number = stem, 1
        while candidate in used:
            number += 1
            candidate = f"{stem}-{number}"
        used.add(candidate)
        unique.append(candidate)
    return unique
