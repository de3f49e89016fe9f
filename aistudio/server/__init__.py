"""The training service (``aistudio serve``, the ``server`` extra): experiments, runs and live progress over
HTTP, on the same run directories as ``train.py`` and sweeps.

Nothing trains inside the server: a run is a detached ``train.py`` process, and every reader goes through
the run directory (:mod:`aistudio.runs`), so a run started from the API, a shell or a SLURM sweep looks the
same everywhere. FastAPI, uvicorn, sse-starlette and watchfiles are imported by :mod:`.app` and
:mod:`.stream` only, never by ``aistudio --help``.
"""
