"""Image decoding shared by every task dataset (OpenCV: the fastest decoder measured here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aistudio import AistudioError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"


class ImageReadError(AistudioError):
    """An image or mask that cannot be read while training (one line naming the file and the fix).

    Constructible from its message alone, so that torch re-raises it from a DataLoader worker as
    itself; the worker traceback torch prepends is dropped again here.
    """

    def __init__(self, message: str):
        if "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def truncation(data: bytes | np.ndarray) -> str | None:
    """Why an encoded PNG/JPEG is cut short, or None. OpenCV decodes such files to a partly grey
    image with only a warning, which would train on garbage."""
    head = bytes(data[:8])
    tail = bytes(data[-64:])
    if head.startswith(PNG_SIGNATURE) and PNG_END not in tail:
        return "truncated PNG (no IEND chunk at the end)"
    if head.startswith(JPEG_START) and JPEG_END not in tail:
        return "truncated JPEG (no end-of-image marker)"
    return None


def read_encoded(path: str | Path, what: str = "image") -> np.ndarray:
    """The file's bytes, checked for truncation (PNG/JPEG); errors name the file and the fix."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read this {what} ({err.strerror}) — restore the file or remove "
                             "its entry from dataset.json") from None
    problem = truncation(data) if data.size else f"empty {what} file"
    if problem:
        raise ImageReadError(f"{path}: {problem} — replace the file or remove its entry from dataset.json "
                             "(aistudio validate <project> --check-images full lists every such file)")
    return data


def read_image(path: str | Path, channels: int = 3) -> np.ndarray:
    """Decode to HxWxC uint8 (RGB for 3 channels); a file that cannot be decoded names itself."""
    import cv2

    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imdecode(read_encoded(path), flag)
    if image is None:
        raise ImageReadError(f"{path}: cannot decode this image (corrupt or not an image) — replace the file or "
                             "remove its entry from dataset.json")
    if channels == 1:
        return image[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
