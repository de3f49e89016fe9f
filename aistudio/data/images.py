"""Image decoding shared by every task dataset (OpenCV: the fastest decoder measured here)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from aistudio import AistudioError


class ImageReadError(AistudioError):
    """An image or mask that cannot be read while training (one line naming the file and the fix).

    Constructible from its message alone, so that torch re-raises it from a DataLoader worker as
    itself; the worker traceback torch prepends is dropped again here.
    """

    def __init__(self, message: str):
        if "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def read_encoded(path: str | Path, what: str = "image") -> np.ndarray:
    """The file's bytes; a missing or empty file names itself and the fix."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read this {what} ({err.strerror}) — restore the file or remove "
                             "its entry from dataset.json") from None
    if not data.size:
        raise ImageReadError(f"{path}: empty {what} file — replace the file or remove its entry from dataset.json")
    return data


def decode(path: str | Path, flag: int, what: str = "image") -> np.ndarray:
    """Decode with OpenCV, the one image check used by training and ``validate --check-images full``.

    OpenCV 5 fails on a file whose data ends early (truncated JPEG/PNG) instead of filling the rest
    with grey, and decodes a JPEG with bytes after its end marker (phones' motion photos) like every
    viewer does, so "decodes" is the whole test; no byte heuristic can disagree with the decoder.
    """
    import cv2

    _quiet_opencv()
    image = cv2.imdecode(read_encoded(path, what), flag)
    if image is None:
        raise ImageReadError(f"{path}: cannot decode this {what} (truncated, corrupt or not an image) — replace "
                             "the file or remove its entry from dataset.json (aistudio validate <project> "
                             "--check-images full lists every such file)")
    return image


@functools.cache
def _quiet_opencv() -> None:
    """OpenCV logs its own warning for each file it fails on; ours names the file and the fix instead."""
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


def as_tensor(image: Any) -> Any:
    """HxWxC uint8 -> CxHxW float in [0, 1], for samples no transform turned into a tensor already."""
    import torch

    if isinstance(image, torch.Tensor):
        return image
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255)


def read_image(path: str | Path, channels: int = 3) -> np.ndarray:
    """Decode to HxWxC uint8 (RGB for 3 channels); a file that cannot be decoded names itself."""
    import cv2

    image = decode(path, cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR)
    if channels == 1:
        return image[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
