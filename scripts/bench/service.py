"""The training service's numbers, against ``aistudio serve`` in a subprocess on 127.0.0.1 (a free port):

1. latency from an epoch's metrics.json write (the entry's ``time``, stamped just before the atomic write)
   to its SSE ``metrics`` event at a client, over one run: median and p95 (target: median < 0.5 s);
2. the idle server's CPU (share of one core) and RSS with N connected SSE clients on an active run
   between epochs (targets: < 2 % of a core, < 200 MB);
3. start -> the training's first optimizer step (its first progress line in logs/training.log, the
   timestamp the log line carries): ``POST /api/training/<experiment>/run`` against the same run from
   ``python train.py`` in a shell (the same overrides), alternated.

Prints a JSON object, then a markdown table. Runs, datasets and locks go to a temp folder.

    .venv/bin/python scripts/bench/service.py [--epochs 10] [--clients 50] [--idle-s 20] [--repeat 4]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import REPO, first_step_at, isolate, median

HOST = "127.0.0.1"
TARGETS = {"latency_median_s": 0.5, "idle_cpu_percent": 2.0, "idle_rss_mb": 200.0}
OVERRIDES = ["hardware=cpu", "data.image_size=32", "data.batch_size=16", "trainer.limit_train_batches=10",
             "trainer.limit_val_batches=2", "test=false", "plots=false", "callbacks.early_stopping=null"]
FIRST_STEP = [*OVERRIDES, "trainer.max_epochs=1", "trainer.limit_train_batches=2", "callbacks.progress_bar.kind=log",
              "callbacks.progress_bar.interval_s=0"]


def request(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    connection.request(method, path, body=json.dumps(body).encode() if body is not None else None,
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    data = json.loads(response.read() or b"null")
    connection.close()
    return response.status, data


class Listener(threading.Thread):
    """One SSE client: records (receive time, event, data) until ``end`` or close."""

    def __init__(self, port: int, run_id: str):
        super().__init__(daemon=True)
        self.connection = http.client.HTTPConnection(HOST, port, timeout=600)
        self.connection.request("GET", f"/api/training/{run_id}/stream", headers={"Accept": "text/event-stream"})
        self.response = self.connection.getresponse()
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.connected = self.response.status == 200
        self.start()

    def run(self) -> None:
        event: dict[str, str] = {}
        try:
            while line := self.response.readline():
                text = line.decode().rstrip("\r\n")
                if text == "" and "data" in event:
                    self.events.append((time.time(), event.get("event", "message"), json.loads(event["data"])))
                    if event.get("event") == "end":
                        return
                    event = {}
                elif text and not text.startswith(":"):
                    name, _, value = text.partition(":")
                    event[name] = value.lstrip(" ")
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass

    def close(self) -> None:
        self.connection.close()


def start_server(env: dict[str, str], runs: Path) -> tuple[subprocess.Popen, int]:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "aistudio.cli.main", "serve", "--port", str(port),
                               "--runs-root", str(runs), "--log-level", "warning"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", "/api/health")[0] == 200:
                return server, port
        except OSError:
            time.sleep(0.1)
    server.kill()
    sys.exit("aistudio serve did not answer in 60 s")


def wait_ended(port: int, run_id: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = request(port, "GET", f"/api/runs/{run_id}")[1]["status"]
        if status in ("completed", "failed", "interrupted"):
            return status
        time.sleep(0.2)
    raise SystemExit(f"run {run_id} did not end in {timeout} s")


def latency(port: int, epochs: int) -> list[float]:
    """Seconds from each epoch's metrics.json write to its SSE event at the client, over one run."""
    code, started = request(port, "POST", "/api/training/bench/run", {"overrides": [f"trainer.max_epochs={epochs}"]})
    assert code == 202, started
    listener = Listener(port, started["run_id"])
    listener.join(timeout=900)
    listener.close()
    if not listener.events or listener.events[-1][2].get("status") != "completed":
        sys.exit(f"the latency run did not complete: {listener.events[-3:]}")
    return [received - datetime.fromisoformat(data["time"]).timestamp()
            for received, kind, data in listener.events if kind == "metrics"]


def process_usage(pid: int) -> tuple[float, float, int]:
    """(CPU seconds so far, RSS in MB, threads) of ``pid``, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return cpu, int(status["VmRSS"].split()[0]) / 1024, int(status["Threads"])


def idle(port: int, server_pid: int, runs: Path, clients: int, seconds: float) -> dict[str, Any]:
    """The server's CPU and memory while ``clients`` streams wait on one active run between epochs."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # the run's live process
    run_dir = runs / "idle-run"
    run_dir.mkdir()
    now = datetime.now().astimezone().isoformat()
    (run_dir / "run.json").write_text(json.dumps({
        "schema_version": 1, "id": "idle-run", "status": "running", "attempt": 1, "created_at": now,
        "started_at": now, "heartbeat_at": now, "heartbeat_interval_s": 30, "host": socket.gethostname(),
        "pid": sleeper.pid, "epochs_completed": 0, "history": []}))
    before = process_usage(server_pid)
    listeners = [Listener(port, "idle-run") for _ in range(clients)]
    try:
        assert all(listener.connected for listener in listeners)
        time.sleep(3)  # connections set up, first events sent
        cpu0, _, _ = process_usage(server_pid)
        clock = time.monotonic()
        time.sleep(seconds)
        cpu1, rss, threads = process_usage(server_pid)
        wall = time.monotonic() - clock
        connected = sum(1 for listener in listeners if listener.is_alive())
    finally:
        for listener in listeners:
            listener.close()
        sleeper.kill()
        sleeper.wait()
    return {"clients": clients, "connected": connected, "seconds": round(wall, 1),
            "cpu_percent": round(100 * (cpu1 - cpu0) / wall, 2), "rss_mb": round(rss, 1),
            "rss_mb_before_clients": round(before[1], 1), "threads": threads}


def first_step(port: int, runs: Path, env: dict[str, str], repeat: int) -> dict[str, list[float]]:
    """Start -> first step, through the API (and how long the POST took) and with train.py in a shell; the
    order alternates, so neither always finds the page cache warmed by the other."""
    times: dict[str, list[float]] = {"api": [], "api_response": [], "train.py": []}

    def api() -> None:
        clock = time.time()
        code, started = request(port, "POST", "/api/training/first-step/run")
        times["api_response"].append(time.time() - clock)
        assert code == 202, started
        times["api"].append(first_step_at(runs / started["dir"], time.monotonic() + 300) - clock)
        wait_ended(port, started["run_id"])

    def shell(attempt: int) -> None:
        run_dir = runs / f"shell-{attempt}"
        clock = time.time()
        process = subprocess.Popen([sys.executable, "train.py", *FIRST_STEP, f"hydra.run.dir={run_dir}"], cwd=REPO,
                                   env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times["train.py"].append(first_step_at(run_dir, time.monotonic() + 300) - clock)
        process.wait(timeout=300)

    for attempt in range(repeat):
        if attempt % 2:
            shell(attempt)
            api()
        else:
            api()
            shell(attempt)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the latency run (one event each)")
    parser.add_argument("--clients", type=int, default=50, help="SSE clients of the idle measurement")
    parser.add_argument("--idle-s", type=float, default=20.0, help="seconds the idle server is measured")
    parser.add_argument("--repeat", type=int, default=4, help="start -> first step pairs (median reported)")
    args = parser.parse_args()
    runs, data = isolate("service")
    env = {**os.environ, "AISTUDIO_LOCK_DIR": str(runs.parent / "locks"), "PYTHONUNBUFFERED": "1"}
    server, port = start_server(env, runs)
    try:
        for name, overrides in (("bench", OVERRIDES), ("first-step", FIRST_STEP)):
            code, answer = request(port, "POST", "/api/experiments", {"name": name, "overrides": overrides})
            assert code == 201, answer
        delays = latency(port, args.epochs)
        usage = idle(port, server.pid, runs, args.clients, args.idle_s)
        starts = first_step(port, runs, env, args.repeat)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {
        "latency_s": {"n": len(delays), "median": round(median(delays), 4), "p95": round(percentile(delays, 0.95), 4),
                      "max": round(max(delays), 4), "mean": round(statistics.fmean(delays), 4)},
        "idle": usage,
        "start_to_first_step_s": {k: {"median": round(median(v), 3), "all": [round(x, 3) for x in v]}
                                  for k, v in starts.items()},
        "targets": TARGETS, "cores": os.cpu_count(),
    }
    print(json.dumps(result, indent=2))
    api, shell = result["start_to_first_step_s"]["api"]["median"], result["start_to_first_step_s"]["train.py"]["median"]
    rows = [("metrics.json write -> SSE event, median", f"{result['latency_s']['median']:.3f} s", "< 0.5 s",
             "ok" if result["latency_s"]["median"] < TARGETS["latency_median_s"] else "OVER"),
            ("metrics.json write -> SSE event, p95", f"{result['latency_s']['p95']:.3f} s", "", ""),
            (f"idle CPU, {usage['connected']} SSE clients", f"{usage['cpu_percent']:.2f} % of a core", "< 2 %",
             "ok" if usage["cpu_percent"] < TARGETS["idle_cpu_percent"] else "OVER"),
            (f"idle RSS, {usage['connected']} SSE clients", f"{usage['rss_mb']:.0f} MB "
             f"({usage['rss_mb_before_clients']:.0f} MB before)", "< 200 MB",
             "ok" if usage["rss_mb"] < TARGETS["idle_rss_mb"] else "OVER"),
            ("start -> first step, API", f"{api:.2f} s", "",
             f"POST answered in {result['start_to_first_step_s']['api_response']['median']:.2f} s"),
            ("start -> first step, python train.py", f"{shell:.2f} s", "", f"API - shell: {api - shell:+.2f} s")]
    print("\n| measure | value | target | |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
