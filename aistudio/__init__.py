"""aistudio: Hydra-configured computer-vision training on PyTorch Lightning.

Importing the package stays cheap (no torch): the CLI composes configs without heavy imports.
"""

import os
from pathlib import Path

# albumentations checks PyPI for updates on every import (a 2 s timeout offline); we never want that.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"


class AistudioError(Exception):
    """An error caused by the user's input (config, data): reported as one clear message, no traceback."""


def exception_chain(error: BaseException | None) -> list[BaseException]:
    """``error`` and its causes/contexts, outermost first (Hydra wraps errors raised by ``_target_``s)."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        chain.append(error)
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return chain


def user_error(error: BaseException | None) -> AistudioError | None:
    """The :class:`AistudioError` behind ``error``, if any."""
    return next((e for e in exception_chain(error) if isinstance(e, AistudioError)), None)


def user_path(path: str | os.PathLike) -> Path:
    """A path given on the command line, relative to the folder the command ran in (also when Hydra changed
    the working directory: ``hydra.job.chdir=True``)."""
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.cwd) / path
    except ImportError:
        pass
    return path.resolve()
