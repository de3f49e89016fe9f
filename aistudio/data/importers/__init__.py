"""Importers: common on-disk layouts -> dataset.json projects (paths relative to the project folder)."""

from aistudio.data.importers.coco import import_coco
from aistudio.data.importers.image_folder import import_image_folder
from aistudio.data.importers.masks import import_mask_folder
from aistudio.data.importers.voc import import_voc

__all__ = ["import_coco", "import_image_folder", "import_mask_folder", "import_voc"]
