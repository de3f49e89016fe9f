"""The ``aistudio`` command: dataset import, project checks, run management and the training service (``serve``);
training itself is ``python train.py``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from aistudio import AistudioError
from aistudio.cli.runs import add_runs_parser
from aistudio.cli.serve import add_serve_parser


def _next_steps(path: Path, task: str | None = None) -> None:
    """What to run next; the task is the one the annotations are for (a mask folder: semantic masks)."""
    from aistudio.data.project import infer_task

    task = task or infer_task(path)
    print(f"wrote {path} ({task})\nvalidate with: aistudio validate {path}\n"
          f"train with: python train.py data=project data.project={path} task={task}")


def _import_image_folder(args: argparse.Namespace) -> None:
    from aistudio.data.importers import import_image_folder

    path = import_image_folder(args.source, args.out, val_fraction=args.val, test_fraction=args.test,
                               folds=args.folds, seed=args.seed)
    print(f"wrote {path}\ntrain with: python train.py data=project data.project={path.parent}")


def _import_voc(args: argparse.Namespace) -> None:
    from aistudio.data.importers import import_voc

    path = import_voc(args.root, args.out, val_fraction=args.val, test_fraction=args.test, seed=args.seed,
                      annotations_dir=args.annotations, images_dir=args.images)
    _next_steps(path)


def _import_coco(args: argparse.Namespace) -> None:
    from aistudio.data.importers import import_coco

    pairs = dict(item.split("=", 1) if "=" in item else ("all", item) for item in args.annotations)
    path = import_coco(pairs, args.images, args.out, val_fraction=args.val, test_fraction=args.test, seed=args.seed)
    _next_steps(path)


def _import_masks(args: argparse.Namespace) -> None:
    from aistudio.data.importers import import_mask_folder

    path = import_mask_folder(
        args.images, args.masks, args.out,
        classes=args.classes.split(",") if args.classes else None,
        mask_values=[int(v) for v in args.values.split(",")] if args.values else None,
        ignore_index=args.ignore_index, instances=args.instances,
        val_fraction=args.val, test_fraction=args.test, seed=args.seed)
    _next_steps(path, task="semantic_segmentation")


def _split_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--val", type=float, default=0.15, help="validation fraction when splitting (0.15)")
    parser.add_argument("--test", type=float, default=0.15, help="test fraction when splitting (0.15)")
    parser.add_argument("--seed", type=int, default=0)


def _validate(args: argparse.Namespace) -> int | None:
    from aistudio.data.project import DatasetError, infer_task, load_project

    task = args.task or infer_task(args.project)
    if not args.task:
        print(f"task: {task} (from the annotations; --task to choose)")
    try:
        project = load_project(args.project, task=task, split_index=args.split_index,
                               check_images=args.check_images)
    except DatasetError as err:  # every problem, not the first 30 a training run's message shows
        print(f"{err.source}: {len(err.problems)} problem(s) found:", file=sys.stderr)
        for problem in err.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    counts = {s: len(project.split(s)) for s in ("train", "val", "test")}
    for warning in project.warnings:
        print(f"warning: {warning}")
    print(f"{args.project}: OK — {project.num_classes} classes, {len(project.images)} images, "
          f"split {args.split_index}: {counts}" + (f", {len(project.warnings)} warning(s)" if project.warnings else ""))


def _synthetic(args: argparse.Namespace) -> None:
    import time

    from aistudio.data.synthetic import write_synthetic_project

    start = time.perf_counter()
    path = write_synthetic_project(args.folder, args.images, classes=args.classes, size=args.size,
                                   files=not args.no_files, seed=args.seed)
    what = "entries, no image files" if args.no_files else f"{args.size}x{args.size} PNG images"
    print(f"wrote {path}: {args.images} {what}, {args.classes} classes ({time.perf_counter() - start:.1f} s)")
    if args.no_files:
        print(f"load it without touching files: python train.py data=project data.project={path.parent} "
              "data.check_images=off")
    else:
        print(f"validate with: aistudio validate {path.parent}")


def _add_import_parser(commands: Any) -> None:
    importer = commands.add_parser("import", help="turn a folder layout into a dataset.json project")
    kinds = importer.add_subparsers(dest="kind", required=True)
    folder = kinds.add_parser("image-folder", help="one sub-folder per class (classification)")
    folder.add_argument("source", help="folder with one sub-folder of images per class")
    folder.add_argument("--out", help="where dataset.json goes (default: the source folder)")
    folder.add_argument("--folds", type=int, default=0, help="also add k-fold split schemes (k >= 2)")
    _split_options(folder)
    folder.set_defaults(func=_import_image_folder)

    voc = kinds.add_parser("voc", help="Pascal VOC: Annotations/*.xml + JPEGImages (+ ImageSets/Main or "
                                             "{train,val,test}_labels.csv split lists)")
    voc.add_argument("root", help="the folder holding Annotations/ and JPEGImages/")
    voc.add_argument("--out", help="where dataset.json goes (default: root)")
    voc.add_argument("--annotations", help="folder of the XML files (default: root/Annotations)")
    voc.add_argument("--images", help="folder of the images (default: root/JPEGImages)")
    _split_options(voc)
    voc.set_defaults(func=_import_voc)

    coco = kinds.add_parser("coco", help="COCO JSON (boxes, polygons, RLE)")
    coco.add_argument("annotations", nargs="+", help="train=a.json val=b.json [test=c.json], or one file to split")
    coco.add_argument("--images", required=True, help="folder the COCO file_name entries are relative to")
    coco.add_argument("--out", required=True, help="where dataset.json goes")
    _split_options(coco)
    coco.set_defaults(func=_import_coco)

    masks = kinds.add_parser("masks", help="images + label images with the same file stem (segmentation)")
    masks.add_argument("images", help="folder of images")
    masks.add_argument("masks", help="folder of label images (one class value per pixel)")
    masks.add_argument("--out", help="where dataset.json goes (default: the images folder's parent)")
    masks.add_argument("--classes", help="class names, comma-separated, in the order of --values")
    masks.add_argument("--values", help="pixel value of each class, comma-separated (default: values found)")
    masks.add_argument("--ignore-index", type=int, default=255, help="pixel value to ignore (default 255)")
    masks.add_argument("--instances", action="store_true",
                       help="also write connected components of non-background classes as objects")
    _split_options(masks)
    masks.set_defaults(func=_import_masks)


def _add_dataset_parsers(commands: Any) -> None:
    from aistudio.data.project import known_tasks  # the task configs in conf/task/

    validate = commands.add_parser("validate", help="check a dataset.json project and report every problem")
    validate.add_argument("project", help="project folder (or its dataset.json)")
    validate.add_argument("--task", default=None, choices=known_tasks() or None,
                          help="default: inferred from the annotations")
    validate.add_argument("--split-index", type=int, default=0)
    validate.add_argument("--check-images", default="header", choices=["header", "full", "none", "off"],
                          help="header (default): open each header; full: decode every file as training "
                               "does; none: files exist; off: touch no file")
    validate.set_defaults(func=_validate)

    synthetic = commands.add_parser("synthetic", help="write a synthetic classification project of any size "
                                                      "(scale tests and benchmarks)")
    synthetic.add_argument("folder", help="where dataset.json and images/ go")
    synthetic.add_argument("--images", type=int, required=True, help="number of images (entries)")
    synthetic.add_argument("--classes", type=int, default=10, help="number of classes (10)")
    synthetic.add_argument("--size", type=int, default=32, help="image width and height in pixels (32)")
    synthetic.add_argument("--no-files", action="store_true",
                           help="write dataset.json only: entries whose files do not exist (check_images=off)")
    synthetic.add_argument("--seed", type=int, default=0)
    synthetic.set_defaults(func=_synthetic)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aistudio", description=(__doc__ or "").replace("``", "'"))
    commands = parser.add_subparsers(dest="command", required=True)
    _add_import_parser(commands)
    _add_dataset_parsers(commands)
    add_runs_parser(commands)
    add_serve_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except AistudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
