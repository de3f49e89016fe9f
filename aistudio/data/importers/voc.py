"""Pascal VOC (``Annotations/*.xml``, ``JPEGImages/``, optional ``ImageSets/Main/{train,val,test}.txt``
or ``{train,val,test}_labels.csv`` split lists)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from aistudio import AistudioError
from aistudio.data.importers.common import holdout_by_first_class, log, progress, relative
from aistudio.data.project import write_project


def _split_lists(root: Path) -> tuple[dict[str, str], str]:
    """Image id -> split from whichever of ImageSets/Main/{train,val,test}.txt exist, else from CSV lists
    at the root (``{train,val,test}_labels.csv`` or ``{split}.csv``, a ``filename`` column: the common
    Kaggle/Roboflow layout); empty when there are none. Also the scheme's name (where the lists came from)."""
    main = root / "ImageSets" / "Main"
    split_of: dict[str, str] = {}
    for split in ("train", "val", "test"):
        listing = main / f"{split}.txt"
        if listing.is_file():
            for line in listing.read_text().split():
                split_of.setdefault(line.strip(), split)
    return (split_of, "voc-imagesets") if split_of else (_csv_split_lists(root), "csv-lists")


def _csv_split_lists(root: Path) -> dict[str, str]:
    import csv

    split_of: dict[str, str] = {}
    for split in ("train", "val", "test"):
        listing = next((p for p in (root / f"{split}_labels.csv", root / f"{split}.csv") if p.is_file()), None)
        if listing is None:
            continue
        with listing.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
        column = next((c for c in ("filename", "file", "image", "image_id") if rows and c in rows[0]), None)
        if column is None:
            raise AistudioError(f"{listing}: a split list needs a 'filename' column naming each image — add one "
                                "or remove the file to split at random")
        for row in rows:  # one row per box in these files: an image appears once per box
            split_of.setdefault(Path(row[column].strip()).stem, split)
        log.info("split list %s: %d images -> %s", listing.name,
                 sum(1 for s in split_of.values() if s == split), split)
    return split_of


def _scheme(root: Path, ids: list[str], names_per_image: list[list[str]], val_fraction: float,
            test_fraction: float, seed: int) -> tuple[list[str], str]:
    """Split scheme 0: the given lists, never dropped. A missing val list is carved from the train list
    (seeded, stratified, reported) and the official test list stays test: test images never reach training.
    No lists at all: a seeded hold-out split."""
    split_of, source = _split_lists(root)
    if not split_of:
        return holdout_by_first_class(names_per_image, val_fraction, test_fraction, seed), f"holdout-seed{seed}"
    scheme = [split_of.get(i, "train") for i in ids]  # images in no list: train
    given = set(split_of.values())
    if "val" in given:
        return scheme, source
    train = [n for n, split in enumerate(scheme) if split == "train"]
    carve_test = test_fraction if "test" not in given else 0.0
    carved = holdout_by_first_class([names_per_image[n] for n in train], val_fraction, carve_test, seed)
    for n, split in zip(train, carved):
        scheme[n] = split
    log.warning("%s: the split lists have no val list: %d of the %d train-listed images became val (seed %d, "
                "--val %s)%s", root, carved.count("val"), len(train), seed, val_fraction,
                "; the official test list stays test" if "test" in given else
                f"; {carved.count('test')} became test (--test {test_fraction})")
    return scheme, f"{source}+holdout-seed{seed}"


def import_voc(root: str | Path, out: str | Path | None = None, *, val_fraction: float = 0.15,
               test_fraction: float = 0.15, seed: int = 0, annotations_dir: str | Path | None = None,
               images_dir: str | Path | None = None) -> Path:
    """Boxes from VOC XML: corners (xmin, ymin, xmax, ymax) -> COCO [xmin, ymin, xmax - xmin, ymax - ymin].

    Split scheme 0 follows ``ImageSets/Main`` (see :func:`_scheme`). ``annotations_dir`` / ``images_dir``
    replace ``Annotations/`` / ``JPEGImages/`` for sets laid out otherwise (``annotations/`` + ``images/``).
    Boxes are kept as they are: dataset validation reports and drops degenerate ones when the project is loaded.
    """
    root = Path(root).expanduser().resolve()
    out_dir = Path(out).expanduser().resolve() if out else root
    xml_dir = Path(annotations_dir).expanduser().resolve() if annotations_dir else root / "Annotations"
    jpeg_dir = Path(images_dir).expanduser().resolve() if images_dir else root / "JPEGImages"
    annotations = sorted(xml_dir.glob("*.xml"))
    if not annotations:
        raise AistudioError(f"{xml_dir}: no *.xml annotations — pass the folder that holds Annotations/ and "
                            "JPEGImages/, or name other folders with --annotations DIR --images DIR")
    images, names_per_image, classes = [], [], set()
    for xml_path in progress(annotations, len(annotations), "VOC annotations"):
        tree = ET.parse(xml_path).getroot()
        filename = tree.findtext("filename") or f"{xml_path.stem}.jpg"
        image_path = jpeg_dir / filename
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
    scheme, scheme_name = _scheme(root, [e["id"] for e in images], names_per_image, val_fraction, test_fraction,
                                  seed)
    for entry, split in zip(images, scheme):
        entry["split"] = [split]
    written = write_project(out_dir, sorted(classes), images, split_schemes=[scheme_name], source=str(root))
    log.info("wrote %s: %d images, %d boxes, classes %s, split %s", written, len(images),
             sum(len(e["objects"]) for e in images), sorted(classes), scheme_name)
    return written
