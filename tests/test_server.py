"""The training service over real HTTP: ``aistudio serve`` in a subprocess on 127.0.0.1 (a free port), runs
started through the API and from a shell, live progress read as a browser's EventSource reads it.

One server and a handful of tiny digits runs (workers on, as by default) are shared by the module: the
training tests run in file order, each waiting for the previous run to end (they share the project lock).
The unit tests at the end check the override allow-list and the helpers in-process.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from aistudio.server.errors import ApiError
from aistudio.server.launcher import exit_reason, hydra_value
from aistudio.server.safety import OverridePolicy, check_id
from tests.helpers import CONF, ROOT, subprocess_env

HOST = "127.0.0.1"
# digits, a few batches an epoch (DataLoader workers on: the default path)
TINY = ["hardware=cpu", "data.image_size=32", "data.batch_size=16", "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "callbacks.progress_bar.kind=none",
        "plots=false"]


# -- a client ----------------------------------------------------------------------------------------
class Server:
    def __init__(self, port: int, tmp: Path, process: subprocess.Popen):
        self.port, self.tmp, self.process = port, tmp, process
        self.runs = tmp / "runs"

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=60)
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        connection.request(method, path, body=payload,
                           headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        data = response.read()
        connection.close()
        kind = response.getheader("Content-Type") or ""
        return response.status, json.loads(data) if "json" in kind else data.decode()

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        code, data = self.request(method, path, body)
        assert code == status, (code, data)
        return data

    def run_dir(self, run_id: str) -> Path:
        return self.runs / self.ok("GET", f"/api/runs/{run_id}")["dir"]

    def wait_status(self, run_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = self.ok("GET", f"/api/runs/{run_id}")
            if run["status"] in statuses:
                return run
            time.sleep(0.2)
        raise AssertionError(f"run {run_id} is still {run['status']}: {self.log(run_id)}")

    def log(self, run_id: str) -> str:
        return "\n".join(self.ok("GET", f"/api/runs/{run_id}/log?tail=40")["lines"])


class EventStream:
    """An SSE client on its own thread: ``events`` receives (event, id, data) in order; comments are counted."""

    def __init__(self, server: Server, run_id: str, last_event_id: str | None = None):
        self.connection = http.client.HTTPConnection(HOST, server.port, timeout=120)
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_event_id} if last_event_id else {})}
        self.connection.request("GET", f"/api/training/{run_id}/stream", headers=headers)
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.read()
        self.events: queue.Queue = queue.Queue()
        self.comments = 0
        self.closed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        event: dict[str, str] = {}
        try:
            while True:
                line = self.response.readline()
                if not line:
                    break
                text = line.decode().rstrip("\r\n")
                if text.startswith(":"):
                    self.comments += 1
                elif text == "":
                    if "event" in event or "data" in event:
                        self.events.put((event.get("event", "message"), event.get("id"), json.loads(event["data"])))
                    event = {}
                else:
                    name, _, value = text.partition(":")
                    event[name] = value[1:] if value.startswith(" ") else value
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            pass  # closed by the test (http.client reads from a closed response this way)
        finally:
            self.closed.set()

    def next(self, timeout: float = 120) -> tuple[str, str | None, dict[str, Any]]:
        return self.events.get(timeout=timeout)

    def until(self, name: str, timeout: float = 120) -> list[tuple[str, str | None, dict[str, Any]]]:
        """Every event up to and including the first ``name`` event."""
        seen = []
        deadline = time.monotonic() + timeout
        while not seen or seen[-1][0] != name:
            seen.append(self.next(timeout=max(0.1, deadline - time.monotonic())))
        return seen

    def close(self) -> None:
        self.connection.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def run_pid_alive(run_dir: Path) -> int | None:
    try:
        pid = int(json.loads((run_dir / "run.json").read_text()).get("pid") or 0)
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


@pytest.fixture(scope="module")
def server(tmp_path_factory, data_dir) -> Server:
    tmp = tmp_path_factory.mktemp("service")
    port = free_port()
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    process = subprocess.Popen([sys.executable, "-m", "aistudio.cli.main", "serve", "--port", str(port),
                                "--runs-root", str(tmp / "runs"), "--data-root", str(data_dir),
                                "--data-root", str(tmp / "projects"), "--heartbeat-s", "1", "--stale-check-s", "0.5"],
                               cwd=ROOT, env=subprocess_env(tmp), stdout=log, stderr=subprocess.STDOUT)
    started = Server(port, tmp, process)
    deadline = time.monotonic() + 60
    while True:
        try:
            if started.request("GET", "/api/health")[0] == 200:
                break
        except OSError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, (tmp / "server.log").read_text()
        time.sleep(0.1)
    yield started
    process.terminate()
    process.wait(timeout=30)
    log.close()
    for run_json in (tmp / "runs").rglob("run.json"):  # nothing a failed test started outlives it
        pid = run_pid_alive(run_json.parent)
        if pid:
            os.killpg(os.getpgid(pid), signal.SIGKILL)


@pytest.fixture(scope="module")
def tiny(server: Server) -> str:
    """A saved experiment: 2 epochs of tiny digits (runs add their own trainer.max_epochs)."""
    server.ok("POST", "/api/experiments", {"name": "tiny", "overrides": [*TINY, "trainer.max_epochs=2"],
                                           "description": "a few batches of digits"}, status=201)
    return "tiny"


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) if folder.exists() else set()


# -- runs through the API ----------------------------------------------------------------------------
@pytest.mark.slow
def test_a_run_starts_at_once_streams_every_epoch_once_and_a_second_start_is_refused(server, tiny):
    clock = time.monotonic()
    started = server.ok("POST", f"/api/training/{tiny}/run", {"overrides": ["trainer.max_epochs=3"]}, status=202)
    answered = time.monotonic() - clock
    run_id = started["run_id"]
    assert started["status"] == "pending" and answered < 5
    record = json.loads((server.runs / started["dir"] / "run.json").read_text())  # there before the answer
    assert record["id"] == run_id and record["status"] in ("pending", "running")
    # the project's devices are taken from the click on: a second start is refused, naming the run
    code, refused = server.request("POST", f"/api/training/{tiny}/run")
    assert code == 409 and refused["active_run"] == run_id and run_id in refused["detail"]

    first = EventStream(server, run_id)
    kind, _, status = first.next()
    assert kind == "status" and status["status"] in ("pending", "running")
    events = first.until("metrics")
    second = EventStream(server, run_id, last_event_id=events[-1][1])  # a reconnect after epoch 0
    events += first.until("end")
    rest = second.until("end")
    first.close()
    second.close()

    epochs = [int(i) for kind, i, _ in events if kind == "metrics"]
    assert epochs == [0, 1, 2]  # every epoch exactly once, ids = epochs
    assert [int(i) for kind, i, _ in rest if kind == "metrics"] == [1, 2]  # continued: none missed or repeated
    statuses = [data["status"] for kind, _, data in events if kind == "status"]
    assert statuses[-1] == "completed" and "running" in statuses and events[-1][2]["status"] == "completed"
    assert all(data["val_acc"] is not None for kind, _, data in events if kind == "metrics")
    assert first.comments >= 1  # heartbeats while it was starting (--heartbeat-s 1)

    run = server.ok("GET", f"/api/runs/{run_id}")
    assert run["status"] == "completed" and run["experiment"] == tiny and run["epochs_completed"] == 3
    assert run["run"]["attempt"] == 1 and run["run"]["history"] == []  # train.py took the pending record over
    assert run["run"]["created_at"] == record["created_at"] and run["run"]["pid"] != server.process.pid
    metrics = server.ok("GET", f"/api/runs/{run_id}/metrics")
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    assert [m["epoch"] for m in server.ok("GET", f"/api/runs/{run_id}/metrics?after=1")] == [2]
    lines = server.ok("GET", f"/api/runs/{run_id}/log?tail=5")["lines"]
    assert len(lines) == 5 and "done: best val_acc" in lines[-1]
    assert [r["run_id"] for r in server.ok("GET", f"/api/runs?experiment={tiny}&status=completed")] == [run_id]
    assert server.ok("GET", f"/api/experiments/{tiny}")["runs"] == [run_id]
    # a stream of a finished run: its state, every epoch, the end
    replay = EventStream(server, run_id)
    assert [kind for kind, _, _ in replay.until("end")] == ["status", "metrics", "metrics", "metrics", "end"]
    replay.close()


@pytest.mark.slow
def test_stop_saves_last_ckpt_resume_continues_and_kill_9_reads_interrupted_with_the_server_up(server, tiny):
    run_id = server.ok("POST", f"/api/training/{tiny}/run", {"overrides": ["trainer.max_epochs=20"]}, status=202)["run_id"]
    stream = EventStream(server, run_id)
    stream.until("metrics")
    assert server.ok("POST", f"/api/runs/{run_id}/stop", status=202)["status"] == "stopping"
    events = stream.until("end")
    stream.close()
    assert events[-1][2]["status"] == "interrupted"
    run = server.ok("GET", f"/api/runs/{run_id}")
    assert run["status"] == run["recorded_status"] == "interrupted"
    assert "SIGTERM" in run["error"] and "last.ckpt saved" in run["error"]
    assert (server.run_dir(run_id) / "checkpoints" / "last.ckpt").is_file()
    code, refused = server.request("POST", f"/api/runs/{run_id}/stop")
    assert code == 409 and refused["status"] == "interrupted"

    # resume: train.py's own resume=, in the run's directory; the stream goes on from the last epoch it had
    done = run["epochs_completed"]
    resumed = server.ok("POST", f"/api/runs/{run_id}/resume", status=202)
    assert resumed["run_id"] == run_id and resumed["status"] == "pending"
    stream = EventStream(server, run_id, last_event_id=str(done - 1))
    events = stream.until("metrics")
    assert events[0][2]["status"] == "pending"  # not the interrupted record the new process has not taken yet
    assert [int(i) for kind, i, _ in events if kind == "metrics"] == [done]  # nothing repeated
    record = server.ok("GET", f"/api/runs/{run_id}")["run"]
    assert record["attempt"] == 2 and record["history"][0]["status"] == "interrupted"

    # kill -9 of the training process: no handler runs; the stream reports it, the server is not touched
    os.kill(record["pid"], signal.SIGKILL)
    events = stream.until("end", timeout=30)
    stream.close()
    status = [data for kind, _, data in events if kind == "status"][-1]
    assert events[-1][2]["status"] == status["status"] == "interrupted"
    assert status["recorded_status"] == "running" and "is gone" in status["stale"]
    assert server.ok("GET", "/api/health")["status"] == "ok" and server.process.poll() is None
    assert run_id in [r["run_id"] for r in server.ok("GET", "/api/runs?status=interrupted")]


@pytest.mark.slow
def test_a_run_dying_before_it_starts_is_failed_with_its_reason_not_pending(server, tiny):
    # passes composition (a text key), refused by train.py's own type check before the run starts
    run_id = server.ok("POST", f"/api/training/{tiny}/run", {"overrides": ["hardware.precision=17"]},
                       status=202)["run_id"]
    stream = EventStream(server, run_id)
    events = stream.until("end", timeout=60)
    stream.close()
    assert events[-1][2]["status"] == "failed"
    run = server.ok("GET", f"/api/runs/{run_id}")
    assert run["status"] == "failed" and "hardware.precision" in run["error"], run["error"]
    assert "before the run started" in run["error"] and run["run"]["error"]["traceback"]  # the output's tail
    # retry: a new run of the same experiment and overrides, the ones given now winning; stopped at once,
    # before it trains, it ends interrupted (never pending)
    retried = server.ok("POST", f"/api/runs/{run_id}/retry", {"overrides": ["hardware.precision=32-true"]},
                        status=202)
    assert retried["run_id"] != run_id and retried["experiment_id"] == tiny
    record = server.ok("GET", f"/api/runs/{retried['run_id']}")["run"]
    assert record["launch"]["retry_of"] == run_id and "hardware.precision=32-true" in record["overrides"]
    assert "hardware.precision=17" not in record["overrides"]
    server.ok("POST", f"/api/runs/{retried['run_id']}/stop", status=202)
    assert server.wait_status(retried["run_id"], ("completed", "failed", "interrupted"))["status"] == "interrupted"


@pytest.mark.slow
def test_a_run_started_in_a_shell_is_listed_blocks_the_run_button_streams_and_stops(server, tiny):
    run_dir = server.runs / "from-a-shell"
    shell = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *TINY, "trainer.max_epochs=20",
                              f"hydra.run.dir={run_dir}"], cwd=ROOT, env=subprocess_env(server.tmp),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "run.json").exists():
            assert shell.poll() is None and time.monotonic() < deadline, shell.stderr.read()
            time.sleep(0.1)
        run_id = json.loads((run_dir / "run.json").read_text())["id"]
        stream = EventStream(server, run_id)
        stream.until("metrics")
        listed = {r["run_id"]: r for r in server.ok("GET", "/api/runs?status=running")}
        assert run_id in listed and listed[run_id]["dir"] == "from-a-shell"
        before = files_under(server.runs)
        code, refused = server.request("POST", f"/api/training/{tiny}/run")
        assert code == 409 and refused["active_run"] == run_id and str(run_dir) in refused["detail"]
        assert files_under(server.runs) - before <= {p for p in files_under(run_dir)}  # no run directory made
        assert server.ok("POST", f"/api/runs/{run_id}/stop", status=202)["status"] == "stopping"
        events = stream.until("end")
        stream.close()
        assert shell.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
    assert events[-1][2]["status"] == "interrupted" and (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_a_sweep_job_is_found_by_its_id_and_streamed(server):
    job = server.runs / "multirun" / "2026-01-01_00-00-00" / "3"
    job.mkdir(parents=True)
    (job / "metrics.json").write_text(json.dumps([{"epoch": e, "val_acc": 0.5 + e / 10} for e in range(4)]))
    (job / "run.json").write_text(json.dumps({"id": "20260101-000000-sweep3", "status": "completed", "attempt": 1,
                                              "overrides": ["experiment=digits_resnet18", "optimizer.lr=0.1"],
                                              "epochs_completed": 4}))
    listed = {r["run_id"]: r for r in server.ok("GET", "/api/runs?experiment=digits_resnet18")}
    assert listed["20260101-000000-sweep3"]["dir"] == "multirun/2026-01-01_00-00-00/3"
    stream = EventStream(server, "20260101-000000-sweep3", last_event_id="1")
    events = stream.until("end")
    stream.close()
    assert [(kind, i) for kind, i, _ in events] == [("status", None), ("metrics", "2"), ("metrics", "3"), ("end", None)]


# -- refusals ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_experiments_are_listed_saved_and_refused_with_the_key_named(server, tiny):
    listed = {e["id"]: e for e in server.ok("GET", "/api/experiments")}
    assert listed["digits_resnet18"]["kind"] == "recipe" and listed[tiny]["kind"] == "saved"
    assert "ResNet-18" in listed["digits_resnet18"]["description"]
    saved = server.ok("POST", "/api/experiments", {"name": "short-recipe", "recipe": "digits_resnet18",
                                                   "overrides": ["trainer.max_epochs=2"]}, status=201)
    assert saved["summary"]["max_epochs"] == 2 and saved["summary"]["model"] == "resnet18"
    assert server.ok("GET", "/api/experiments/short-recipe")["recipe"] == "digits_resnet18"
    assert server.ok("DELETE", "/api/experiments/short-recipe") == {"deleted": "short-recipe"}
    assert server.request("GET", "/api/experiments/short-recipe")[0] == 404
    for body, key in [({"name": "x", "overrides": ["trainer.max_epochz=3"]}, "trainer.max_epochz"),
                      ({"name": "x", "overrides": ["model=resnet999"]}, "model"),
                      ({"name": "x", "overrides": ["trainer.max_epochs=three"]}, "trainer.max_epochs"),
                      ({"name": "x", "overrides": ["data=project"]}, "data.project")]:
        code, refused = server.request("POST", "/api/experiments", body)
        assert code == 422 and refused["key"] == key, refused
    assert server.request("POST", "/api/experiments", {"name": tiny})[0] == 409
    assert server.request("POST", "/api/experiments", {"name": "digits_resnet18"})[0] == 409
    assert server.request("DELETE", "/api/experiments/digits_resnet18")[0] == 409
    code, refused = server.request("POST", "/api/experiments", {"name": "x", "recipe": "nope"})
    assert code == 422 and "digits_resnet18" in refused["detail"]
    assert server.request("POST", "/api/training/nope/run")[0] == 404
    assert server.request("GET", "/api/runs/20000101-000000-abcdef")[0] == 404
    assert server.request("GET", "/api/runs?status=sleeping")[0] == 422
    code, refused = server.request("POST", "/api/experiments", raw=b"{not json")
    assert code == 422 and refused["error"] == "invalid request"
    assert server.request("GET", "/nowhere")[1]["error"] == "not found"
    assert server.request("PUT", "/api/runs")[1]["error"] == "method not allowed"
    assert server.request("GET", "/docs")[0] == 200 and "/api/runs/{run_id}" in server.ok("GET", "/openapi.json")["paths"]
    code, page = server.request("GET", "/")  # the dashboard page when it is installed, else where things are
    assert code == 200 and ("<html" in page.lower() if isinstance(page, str) else page["docs"] == "/docs")


@pytest.mark.slow
def test_traversal_and_injection_are_refused_and_create_no_files(server, tiny, tmp_path):
    outside = tmp_path / "outside-run"
    outside.mkdir()
    (outside / "run.json").write_text(json.dumps({"id": "outside-run", "status": "completed"}))
    (server.runs / "escape").symlink_to(outside, target_is_directory=True)
    before = files_under(server.runs) | files_under(tmp_path)
    for path in ["/api/runs/..", "/api/runs/.hidden", "/api/runs/..%2F..%2Fetc", "/api/runs/%2Fetc%2Fpasswd",
                 "/api/runs/outside-run", "/api/training/outside-run/stream", "/api/experiments/..",
                 "/api/runs/a%00b/metrics"]:
        code, answer = server.request("GET", path)
        assert code in (404, 422) and answer["error"], (path, code, answer)
    for method, path in [("DELETE", "/api/experiments/.."), ("POST", "/api/training/..%2F..%2Ftmp/run"),
                         ("POST", "/api/runs/../stop")]:
        code, answer = server.request(method, path)
        assert code in (404, 422) and answer["error"], (path, code, answer)
    for name in ["../evil", "/tmp/evil", ".experiments", "a/b"]:
        assert server.request("POST", "/api/experiments", {"name": name})[0] == 422
    injections = ["model._target_=os.system", "data.project={_target_: os.system, command: touch}",
                  "hydra.run.dir=/tmp/evil", "hydra.job.chdir=true", "+trainer.callbacks=[]", "~model",
                  "trainer.max_epochs=${oc.env:HOME}", "optimizer.lr='${oc.env:HOME}'", "exclusive=false",
                  "paths.runs_root=/tmp/evil", f"data.project={tmp_path}", "data.project=../shared/data",
                  f"data.project={server.runs}/escape", "checkpoint_io.background=false", "model@x=resnet18",
                  "trainer.max_epochs=1,2"]
    for override in injections:
        code, refused = server.request("POST", "/api/experiments", {"name": "evil", "overrides": [override]})
        assert code == 422 and refused["error"] == "invalid override", (override, refused)
        code, refused = server.request("POST", f"/api/training/{tiny}/run", {"overrides": [override]})
        assert code == 422, (override, refused)
    code, refused = server.request("POST", f"/api/training/{tiny}/run", raw=b'{"overrides": ["' + b"x" * 70000 + b'"]}')
    assert code == 413 and refused["error"] == "request too large"
    assert files_under(server.runs) | files_under(tmp_path) == before  # nothing written anywhere
    assert server.request("GET", "/api/experiments/evil")[0] == 404


# -- in-process units --------------------------------------------------------------------------------
def test_the_override_policy_allows_plain_settings_and_paths_inside_the_roots(tmp_path):
    data, runs = (tmp_path / "data").resolve(), (tmp_path / "runs").resolve()
    (data / "flowers").mkdir(parents=True)
    (data / "link").symlink_to(tmp_path)  # inside by name, outside once followed
    policy = OverridePolicy(CONF, [data], runs)
    allowed = ["model=mobilenet_v3_small", "optimizer.lr=0.01", "trainer.max_epochs=3", "seed=7", "debug=limit",
               f"data.project={data}/flowers", "data=project", f"model.weights={runs}/r1/checkpoints/best.ckpt",
               "model.weights=DEFAULT", "data.mean=[0.5,0.5,0.5]", "callbacks.early_stopping=null"]
    assert policy.check(allowed) == allowed
    for refused in ["model._target_=x", "task.module._target_=x", "data._partial_=true", "hydra.verbose=true",
                    "+seed=1", "++seed=1", "~seed", "seed=${oc.env:HOME}", "paths.data_dir=/x", "resume=latest",
                    f"data.project={data}/link", f"data.project={data}/../x", "data.project=flowers",
                    f"data.project={runs}/r1", "model.weights=/etc/passwd", "data.mean={_args_: [1]}",
                    "seed=range(1,3)", "model@a=b", "seed=1\nhydra.job.chdir=true", "seed=" + "1" * 600]:
        with pytest.raises(ApiError) as refusal:
            policy.check([refused])
        assert refusal.value.status == 422, refused
    with pytest.raises(ApiError):
        policy.check(["seed=1"] * 65)


def test_ids_and_launch_helpers():
    for good in ["20261127-100624-062e7f", "digits_resnet18", "a.b-c_d"]:
        assert check_id("run", good) == good
    for bad in ["", "..", ".hidden", "a/b", "/abs", "a b", "-x", "x" * 129, "a\\b"]:
        with pytest.raises(ApiError):
            check_id("run", bad)
    assert hydra_value("/tmp/runs/20261127-1") == "/tmp/runs/20261127-1"
    assert hydra_value("/tmp/my runs/it's") == "'/tmp/my runs/it\\'s'"
    assert exit_reason("loading\nError: hardware.precision=17: resolve_hardware takes ...\n", 1) == \
        "train.py exited with code 1 before the run started: hardware.precision=17: resolve_hardware takes ..."
    assert exit_reason("", -9) == "train.py killed by SIGKILL before the run started: no output"
