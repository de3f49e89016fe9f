"""The ``aistudio`` command: dataset import and project utilities (training is ``python train.py``)."""

from __future__ import annotations

import argparse
import logging
import sys

from aistudio import AistudioError


def _import_image_folder(args: argparse.Namespace) -> None:
    from aistudio.data.importers import import_image_folder

    path = import_image_folder(args.source, args.out, val_fraction=args.val, test_fraction=args.test,
                               folds=args.folds, seed=args.seed)
    print(f"wrote {path}\ntrain with: python train.py data=project data.project={path.parent}")


def _validate(args: argparse.Namespace) -> None:
    from aistudio.data.project import load_project

    project = load_project(args.project, task=args.task, split_index=args.split_index,
                           check_images=args.check_images)
    counts = {s: len(project.split(s)) for s in ("train", "val", "test")}
    print(f"{args.project}: OK — {project.num_classes} classes, {len(project.images)} images, "
          f"split {args.split_index}: {counts}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aistudio", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    importer = commands.add_parser("import", help="turn a folder layout into a dataset.json project")
    kinds = importer.add_subparsers(dest="kind", required=True)
    folder = kinds.add_parser("image-folder", help="one sub-folder per class")
    folder.add_argument("source", help="folder with one sub-folder of images per class")
    folder.add_argument("--out", help="where dataset.json goes (default: the source folder)")
    folder.add_argument("--val", type=float, default=0.15, help="validation fraction (default 0.15)")
    folder.add_argument("--test", type=float, default=0.15, help="test fraction (default 0.15)")
    folder.add_argument("--folds", type=int, default=0, help="also add k-fold split schemes (k >= 2)")
    folder.add_argument("--seed", type=int, default=0)
    folder.set_defaults(func=_import_image_folder)

    validate = commands.add_parser("validate", help="check a dataset.json project and report every problem")
    validate.add_argument("project", help="project folder (or its dataset.json)")
    validate.add_argument("--task", default="classification")
    validate.add_argument("--split-index", type=int, default=0)
    validate.add_argument("--check-images", default="header", choices=["header", "full", "none"])
    validate.set_defaults(func=_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except AistudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
