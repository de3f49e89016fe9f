"""COCO JSON (boxes, polygons, RLE), one annotation file per split or one file split at random."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from aistudio import AistudioError
from aistudio.data.importers.common import holdout_by_first_class, log, progress, relative
from aistudio.data.project import SPLITS, write_project


def import_coco(annotations: dict[str, str | Path], images_dir: str | Path, out: str | Path, *,
                val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0) -> Path:
    """``annotations`` maps a split (train/val/test) to a COCO file, or ``{"all": file}`` for a random split.

    Classes are the union of category names (sorted by COCO category id); boxes, polygons, RLE and
    ``iscrowd`` are kept as they are.
    """
    images_dir = Path(images_dir).expanduser().resolve()
    out_dir = Path(out).expanduser().resolve()
    bad = [k for k in annotations if k not in (*SPLITS, "all")]
    if bad or not annotations or ("all" in annotations and len(annotations) > 1):
        raise AistudioError("COCO annotations are given per split (train=a.json val=b.json [test=c.json]) or "
                            "as one file (all=file.json) to split at random")
    categories: dict[int, str] = {}
    images: list[dict] = []
    names_per_image: list[list[str]] = []
    for split, path in annotations.items():
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise AistudioError(f"{path}: cannot read COCO JSON ({err})") from None
        for category in data.get("categories", []):
            known = categories.setdefault(int(category["id"]), str(category["name"]))
            if known != category["name"]:
                raise AistudioError(f"{path}: category id {category['id']} is {category['name']!r} here but "
                                    f"{known!r} in another file")
        by_image = defaultdict(list)
        for ann in data.get("annotations", []):
            by_image[ann["image_id"]].append(ann)
        for image in progress(data.get("images", []), len(data.get("images", [])), f"COCO {split}"):
            objects, names = [], []
            for ann in by_image.get(image["id"], []):
                name = categories.get(int(ann["category_id"]), f"<unknown category {ann['category_id']}>")
                obj = {"class": name, "bbox": [float(v) for v in ann["bbox"]], "iscrowd": int(ann.get("iscrowd", 0))}
                if ann.get("segmentation"):
                    obj["segmentation"] = ann["segmentation"]
                objects.append(obj)
                names.append(name)
            entry = {"file": relative(images_dir / image["file_name"], out_dir), "objects": objects,
                     "split": [split]}
            if image.get("width") and image.get("height"):
                entry["width"], entry["height"] = int(image["width"]), int(image["height"])
            images.append(entry)
            names_per_image.append(names)
    if "all" in annotations:
        for entry, split in zip(images, holdout_by_first_class(names_per_image, val_fraction, test_fraction, seed)):
            entry["split"] = [split]
    used = {name for names in names_per_image for name in names}
    dropped = [name for name in categories.values() if name not in used and name.strip("_").lower() == "background"]
    if dropped:  # labelme/CVAT exports list a never-annotated background category (id 0): not a class to learn
        log.warning("dropped the unannotated background category %s", ", ".join(repr(n) for n in dropped))
    classes = [categories[k] for k in sorted(categories) if categories[k] not in dropped]
    written = write_project(out_dir, classes, images, split_schemes=["coco" if "all" not in annotations else
                                                                     f"holdout-seed{seed}"],
                            source={k: str(v) for k, v in annotations.items()})
    log.info("wrote %s: %d images, %d objects, %d classes", written, len(images),
             sum(len(e["objects"]) for e in images), len(classes))
    return written
