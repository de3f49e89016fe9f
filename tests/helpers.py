"""Small real data and config helpers shared by the tests."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"


def make_color_project(root: Path, per_class: int = 12, size: int = 16, seed: int = 0,
                       classes: tuple[str, ...] = ("red", "green", "blue")) -> Path:
    """A tiny, learnable classification project: noisy images dominated by one colour channel."""
    import cv2

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images = []
    pattern = ["train"] * (per_class - 4) + ["val", "val", "test", "test"]
    for label, name in enumerate(classes):
        for i in range(per_class):
            pixels = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
            pixels[:, :, label % 3] = rng.integers(150, 256, size=(size, size), dtype=np.uint8)
            relative = f"img/{name}_{i:02d}.png"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / relative), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
            images.append({"file": relative, "width": size, "height": size, "label": name,
                           "split": [pattern[i], pattern[(i + 4) % per_class]]})
    (root / "dataset.json").write_text(json.dumps({"version": 1, "classes": list(classes), "images": images}))
    return root


def edit_dataset(root: Path, change) -> None:
    """Load dataset.json, let ``change(data)`` mutate it, write it back."""
    path = root / "dataset.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def subprocess_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("AISTUDIO_DATA_DIR", str(tmp / "datasets"))
    env["AISTUDIO_RUNS_DIR"] = str(tmp / "runs")
    env["AISTUDIO_LOCK_DIR"] = str(tmp / "locks")  # tests never contend with the developer's own runs
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_train(args: list[str], tmp: Path, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    """``python train.py <args>`` in a subprocess, from the repository root."""
    return run_entry("train.py", args, tmp, timeout, **kwargs)


def run_train_reporting_imports(args: list[str], tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python train.py <args>`` as a user runs it, reporting at exit which heavy libraries had been imported:
    its stderr ends with ``imported: [...]`` (``[]``: it ended before torch, torchvision and Lightning)."""
    probe = ("import atexit, runpy, sys; "
             "atexit.register(lambda: print('imported:', sorted(m for m in ('torch', 'lightning', 'torchvision') "
             "if m in sys.modules), file=sys.stderr)); "
             f"sys.argv = [{str(ROOT / 'train.py')!r}, *sys.argv[1:]]; "
             f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')")
    return subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, env=subprocess_env(tmp),
                          capture_output=True, text=True, timeout=timeout)


def run_entry(script: str, args: list[str], tmp: Path, timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess:
    """``python <script> <args>`` (train.py, eval.py, ...) in a subprocess, from the repository root."""
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, env=subprocess_env(tmp),
                          capture_output=True, text=True, timeout=timeout, **kwargs)


def assert_eval_reproduces_test(run_dir: Path, tmp: Path) -> dict[str, Any]:
    """``eval.py run=<run_dir>`` gives exactly run.json's test metrics; returns eval/test-best.json."""
    result = run_entry("eval.py", [f"run={run_dir}"], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads((run_dir / "run.json").read_text())["test_metrics"]
    evaluation = json.loads((run_dir / "eval" / "test-best.json").read_text())
    assert recorded and evaluation["metrics"] == recorded
    assert "reproduces run.json's test_metrics" in evaluation["notes"]
    assert evaluation["checkpoint"]["path"] == "checkpoints/best.ckpt" and evaluation["per_class"]
    assert evaluation["plots"] and all(is_png(run_dir / p) for p in evaluation["plots"])
    return evaluation


def is_png(path: Path) -> bool:
    """A whole PNG file that decodes (not only its signature)."""
    import cv2

    data = path.read_bytes()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None


# plots=false: the end-of-run pictures (~2 s a run) are tested by the runs that check them
# (test_evaluate.py, the detection and segmentation end-to-end tests), not by every lifecycle run
FAST_TRAIN = ["hardware=cpu", "data.num_workers=0", "data.image_size=32", "data.batch_size=8",
              "model=resnet18", "callbacks.progress_bar.kind=none", "plots=false"]


# the default data path: workers on (data.num_workers=auto), the progress bar as the terminal decides
DEFAULT_PATH = [a for a in FAST_TRAIN if not a.startswith(("data.num_workers", "callbacks.progress_bar"))]


def start_train(args: list[str], tmp: Path, new_session: bool = False) -> subprocess.Popen:
    """``python train.py`` in the background; ``new_session``: its own process group, as a shell job has."""
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=subprocess_env(tmp),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=new_session)


def runs_cli(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """``aistudio runs <args>`` over the runs root the test's train.py runs write to."""
    return subprocess.run([sys.executable, "-m", "aistudio.cli.main", "runs", "--root", str(tmp / "runs"), *args],
                          cwd=ROOT, env=subprocess_env(tmp), capture_output=True, text=True, timeout=600)


def epochs_in(run_dir: Path) -> list[int]:
    """The epochs metrics.json holds so far (one entry per finished epoch)."""
    path = run_dir / "metrics.json"
    return [m["epoch"] for m in json.loads(path.read_text())] if path.exists() else []


def wait_until(process: subprocess.Popen | TerminalRun, condition, timeout: float = 600, poll_s: float = 0.02) -> None:
    """Poll ``condition()`` until it holds; fail at once, with the run's output, if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            output = process.text() if isinstance(process, TerminalRun) else \
                (process.stderr.read() if process.stderr else "")
            raise AssertionError(f"training ended (code {process.returncode}) before the condition: {output[-3000:]}")
        time.sleep(poll_s)
    raise AssertionError("timed out waiting for the training subprocess")


class TerminalRun:
    """``python train.py`` in a real pseudo-terminal: Ctrl-C typed there reaches the whole foreground
    process group (the trainer and its DataLoader workers), as in a user's shell."""

    def __init__(self, args: list[str], tmp: Path):
        env = subprocess_env(tmp)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a session leader whose controlling terminal is the pty
            try:
                os.chdir(ROOT)
                os.execve(sys.executable, [sys.executable, str(ROOT / "train.py"), *args], env)
            finally:
                os._exit(127)  # never run the rest of pytest in the forked child
        self.output = bytearray()
        self.returncode: int | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:  # a terminal must be drained, or the child blocks on its writes
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += chunk

    def type_ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                raise AssertionError(f"still running after {timeout} s: {self.text()[-3000:]}")
            time.sleep(0.05)
        self._reader.join(timeout=5)
        os.close(self.fd)
        return self.returncode  # type: ignore[return-value]

    def text(self) -> str:
        return self.output.decode(errors="replace")


def assert_onnx_export_matches(run_dir: Path, tmp: Path) -> dict[str, Any]:
    """``export.py run=<run_dir> format=onnx`` passes its parity check; returns export/<file>.onnx.json."""
    result = run_entry("export.py", [f"run={run_dir}", "format=onnx"], tmp, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (run_dir / "export").glob("*.json")]
    record = next(r for r in records if r["format"] == "onnx")
    assert record["check"]["passed"] and record["check"]["images"] >= 3 and record["opset"] == 17
    assert (run_dir / "export" / record["file"]).stat().st_size > 0 and "-> passed" in result.stdout
    return record
