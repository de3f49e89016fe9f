"""What a run prints, on a terminal and into a file: each line once, epoch lines above the rich bar,
progress lines when there is no bar, no library noise, and the config summary at start."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import FAST_TRAIN, ROOT, TerminalRun, make_color_project, subprocess_env

pytestmark = pytest.mark.slow

DEFAULT_PATH = [a for a in FAST_TRAIN if not a.startswith(("data.num_workers", "callbacks.progress_bar"))]
NOISE = ("litlogger", "LeafSpec", "srun", "Got processor for bboxes")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def _args(tmp_path, *extra: str) -> list[str]:
    project = make_color_project(tmp_path / "colors", per_class=16)
    return ["data=project", f"data.project={project}", *DEFAULT_PATH, "data.batch_size=4", "trainer.max_epochs=2",
            f"hydra.run.dir={tmp_path / 'run'}", *extra]


def test_output_to_a_file_has_progress_lines_each_line_once_and_no_library_noise(tmp_path):
    every_batch = "callbacks.progress_bar.interval_s=0"
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *_args(tmp_path, every_batch)],
                            cwd=ROOT, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert f"run directory: {tmp_path / 'run'}" in out
    assert re.search(r"config: task classification · model resnet18 \(weights none\) · data .*colors · "
                     r"image 32, batch 4 · SGD lr [0-9.]+ · .* · 2 epochs · devices cpu", out), out[:3000]
    progress = re.findall(r"epoch (\d) train batch (\d+)/9 \(\d+%\) · [0-9.]+ img/s( · ETA \d+:\d\d)? · loss [0-9.]",
                          out)
    assert [int(batch) for epoch, batch, _ in progress if epoch == "1"] == list(range(1, 10)), out[-3000:]
    assert "epoch 1 val batch 2/2 (100%)" in out and "- test batch 2/2 (100%)" in out
    lines = [line.split("] - ", 1)[-1] for line in out.splitlines() if "][INFO] - " in line]
    assert len(lines) == len(set(lines)), "a log line printed twice"
    assert "INFO:" not in result.stderr and "Trainer.fit` stopped" in out  # Lightning's lines once, in the log
    assert not [word for word in NOISE if word in out + result.stderr], out + result.stderr


def test_on_a_terminal_epoch_lines_print_above_the_rich_bar(tmp_path):
    run = TerminalRun(_args(tmp_path), tmp_path)
    assert run.wait(timeout=300) == 0, run.text()[-3000:]
    text = ANSI.sub("", run.text())
    segments = [s for s in re.split(r"[\r\n]", text) if "epoch 0 (" in s or "epoch 1 (" in s]
    assert len(segments) == 2, text[-3000:]
    # each epoch line is a line of its own, starting with its timestamp, never bar text then the line
    assert all(s.startswith("[20") for s in segments), segments
    assert "━" in text and "INFO:" not in text, text[-3000:]  # the bar was shown; Lightning's lines once
    assert not [word for word in NOISE if word in text], text[-3000:]
