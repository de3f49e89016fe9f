"""Adapters for experiment loggers whose defaults do not fit an offline research machine."""

from __future__ import annotations

import os
from typing import Any


def mlflow_logger(tracking_uri: str, **kwargs: Any) -> Any:
    """MLFlowLogger on a local file store (``file:<dir>``), which MLflow >= 3 refuses unless opted in."""
    from lightning.pytorch.loggers import MLFlowLogger

    if tracking_uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(tracking_uri=tracking_uri, **kwargs)
