"""Pascal VOC (``Annotations/*.xml``, ``JPEGImages/``, optional ``ImageSets/Main/{train,val,test}.txt``)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from aistudio import AistudioError
from aistudio.data.importers.common import holdout_by_first_class, log, progress, relative
from aistudio.data.project import write_project


def _split_lists(root: Path) -> dict[str, str] | None:
    """Image id -> split from ImageSets/Main; None when the folder has no train/val lists."""
    main = root / "ImageSets" / "Main"
    split_of: dict[str, str] = {}
    for split in ("train", "val", "test"):
        listing = main / f"{split}.txt"
        if listing.is_file():
            for line in listing.read_text().split():
                split_of.setdefault(line.strip(), split)
    return split_of if {"train", "val"} <= set(split_of.values()) else None


def import_voc(root: str | Path, out: str | Path | None = None, *, val_fraction: float = 0.15,
               test_fraction: float = 0.15, seed: int = 0) -> Path:
    """Boxes from VOC XML: corners (xmin, ymin, xmax, ymax) -> COCO [xmin, ymin, xmax - xmin, ymax - ymin].

    Split scheme 0 follows ``ImageSets/Main`` when it lists train and val (images in no list: train);
    otherwise a seeded hold-out split. Boxes are kept as they are: dataset validation reports and
    drops degenerate ones when the project is loaded.
    """
    root = Path(root).expanduser().resolve()
    out_dir = Path(out).expanduser().resolve() if out else root
    annotations = sorted((root / "Annotations").glob("*.xml"))
    if not annotations:
        raise AistudioError(f"{root}: no Annotations/*.xml — pass the folder that holds Annotations/ and JPEGImages/")
    images, names_per_image, classes = [], [], set()
    for xml_path in progress(annotations, len(annotations), "VOC annotations"):
        tree = ET.parse(xml_path).getroot()
        filename = tree.findtext("filename") or f"{xml_path.stem}.jpg"
        image_path = root / "JPEGImages" / filename
        entry = {"file": relative(image_path, out_dir), "id": xml_path.stem}
        size = tree.find("size")
        if size is not None and size.findtext("width"):
            entry["width"], entry["height"] = int(size.findtext("width")), int(size.findtext("height"))
        objects, names = [], []
        for obj in tree.findall("object"):
            name = (obj.findtext("name") or "").strip()
            box = obj.find("bndbox")
            x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            objects.append({"class": name, "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "iscrowd": 0, "difficult": int(obj.findtext("difficult") or 0)})
            names.append(name)
            classes.add(name)
        entry["objects"] = objects
        images.append(entry)
        names_per_image.append(names)
    split_of = _split_lists(root)
    if split_of is not None:
        scheme, scheme_name = [split_of.get(e["id"], "train") for e in images], "voc-imagesets"
    else:
        scheme = holdout_by_first_class(names_per_image, val_fraction, test_fraction, seed)
        scheme_name = f"holdout-seed{seed}"
    for entry, split in zip(images, scheme):
        entry["split"] = [split]
    written = write_project(out_dir, sorted(classes), images, split_schemes=[scheme_name], source=str(root))
    log.info("wrote %s: %d images, %d boxes, classes %s, split %s", written, len(images),
             sum(len(e["objects"]) for e in images), sorted(classes), scheme_name)
    return written
