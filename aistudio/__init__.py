"""aistudio: Hydra-configured computer-vision training on PyTorch Lightning.

Importing the package stays cheap (no torch): the CLI composes configs without heavy imports.
"""

import os

# albumentations checks PyPI for updates on every import (a 2 s timeout offline); we never want that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"


class AistudioError(Exception):
    """An error caused by the user's input (config, data): reported as one clear message, no traceback."""
