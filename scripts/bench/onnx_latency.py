"""ONNX Runtime vs PyTorch CPU latency of the default classifier, side by side in one process.

The model is built exactly as ``python train.py`` builds it (conf/train.yaml composed by Hydra, then
``aistudio.training.fit.build_module``: resnet18 for the 10 digit classes at 32 px), exported through
the task's ``export_spec`` the way export.py does (``torch.onnx.export(dynamo=False)``, opset 17, dynamic
batch) and timed on the same random inputs: PyTorch eager under ``torch.inference_mode`` vs an
onnxruntime CPU session, both with the same thread count. Rounds alternate the two; the median
latency per batch is reported, for batch 1 and batch 32. Weights do not change latency, so none are
trained.

    .venv/bin/python scripts/bench/onnx_latency.py [--batches 1 32] [--iterations 50] [--threads N]
        [--override KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, isolate, median, table

sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from aistudio.config import register_resolvers  # noqa: E402


def default_module(overrides: list[str]) -> tuple[torch.nn.Module, int, int]:
    """(the default run's task module, channels, image size) built through the training build path."""
    from aistudio.training.fit import build_module

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    config = OmegaConf.to_container(cfg, resolve=False)
    for key in ("data", "model", "task", "optimizer", "scheduler"):  # resolve only what the build needs
        config[key] = OmegaConf.to_container(cfg[key], resolve=True)
    classes = [str(i) for i in range(10)]
    return build_module(config, classes, None).eval(), int(config["data"]["channels"]), int(config["data"]["image_size"])


def timed(run, x, iterations: int) -> list[float]:
    run(x)  # warm-up
    times = []
    for _ in range(iterations):
        started = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--override", action="append", default=[])
    args = parser.parse_args()
    isolate("onnx")
    import onnxruntime

    torch.set_num_threads(args.threads)
    module, channels, size = default_module(args.override)
    spec = module.export_spec()
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    torch.onnx.export(spec.module, (torch.rand(2, channels, size, size),), str(path), dynamo=False, opset_version=17,
                      input_names=spec.input_names, output_names=spec.output_names, dynamic_axes=spec.dynamic_axes)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def pytorch(x: torch.Tensor) -> None:
        with torch.inference_mode():
            spec.module(x)

    rows, results = [], []
    for batch in args.batches:
        x = torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(batch))
        feed = {spec.input_names[0]: x.numpy()}
        torch_times, onnx_times = [], []
        for _ in range(args.rounds):
            torch_times += timed(pytorch, x, args.iterations)
            onnx_times += timed(lambda t: session.run(None, {spec.input_names[0]: t.numpy()}), x, args.iterations)
        with torch.inference_mode():
            difference = float(np.abs(spec.module(x).numpy() - session.run(None, feed)[0]).max())
        t, o = median(torch_times) * 1000, median(onnx_times) * 1000
        results.append({"batch": batch, "pytorch_ms": t, "onnxruntime_ms": o, "speedup": t / o,
                        "max_abs_diff": difference})
        rows.append([batch, t, o, t / o, f"{difference:.2g}"])
    print(json.dumps({"model": spec.module.__class__.__name__, "image_size": size, "threads": args.threads,
                      "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "results": results}, indent=2))
    print("\n" + table(["batch", "pytorch ms", "onnxruntime ms", "pytorch/onnx", "max |diff|"], rows))


if __name__ == "__main__":
    main()
