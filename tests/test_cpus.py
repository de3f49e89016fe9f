"""A container's CPU quota sizes the run: torch threads and DataLoader workers count the CPUs the quota gives,
not every core of the host (aistudio/cpus.py).

The real-quota tests make a cgroup with a CPU quota in the machine's cgroup file system (root and a writable
cpu controller: skipped otherwise) and put a process in it, as docker --cpus or a Kubernetes limit does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aistudio.cpus import cgroup_cpu_quota, cpu_budget
from tests.helpers import FAST_TRAIN, ROOT, subprocess_env


def cpu_cgroup_root() -> tuple[Path, int] | None:
    """(mount point, version) of a cgroup file system whose cpu controller this process can use to make cgroups."""
    if os.geteuid() != 0:
        return None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fstype, options = after.split()[0], after.split()[2].split(",")
        mount_point = Path(before.split()[4])
        if fstype == "cgroup" and "cpu" in options and os.access(mount_point, os.W_OK):
            return mount_point, 1
        if fstype == "cgroup2" and os.access(mount_point, os.W_OK) \
                and "cpu" in (mount_point / "cgroup.subtree_control").read_text().split():
            return mount_point, 2
    return None


class QuotaGroup:
    """A cgroup ``outer/inner`` with a CPU quota on ``outer``: processes started in ``inner`` inherit it."""

    def __init__(self, mount_point: Path, version: int, cpus: float):
        self.outer = mount_point / f"aistudio-test-{uuid.uuid4().hex[:8]}"
        self.inner = self.outer / "job"
        self.inner.mkdir(parents=True)
        period = 100_000
        if version == 1:
            (self.outer / "cpu.cfs_period_us").write_text(str(period))
            (self.outer / "cpu.cfs_quota_us").write_text(str(int(cpus * period)))
        else:
            (self.outer / "cgroup.subtree_control").write_text("+cpu")
            (self.outer / "cpu.max").write_text(f"{int(cpus * period)} {period}")

    def start(self, command: list[str], **kwargs) -> subprocess.Popen:
        """``command`` as a process of the inner cgroup (it moves itself there before exec)."""
        script = f'echo $$ > {self.inner}/cgroup.procs && exec "$@"'
        return subprocess.Popen(["sh", "-c", script, "sh", *command], **kwargs)

    def remove(self) -> None:
        for folder in (self.inner, self.outer):
            for _ in range(50):  # a process that just exited can take a moment to leave its cgroup
                try:
                    folder.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


@pytest.fixture
def quota_group(request) -> Iterator[QuotaGroup]:
    found = cpu_cgroup_root()
    if found is None:
        pytest.skip("making a cgroup with a CPU quota needs root and a writable cgroup cpu controller")
    group = QuotaGroup(*found, cpus=request.param)
    try:
        yield group
    finally:
        group.remove()


@pytest.mark.parametrize("quota_group", [1.5], indirect=True)
def test_the_quota_of_a_processs_cgroup_and_its_ancestors_caps_its_cpus(quota_group):
    sleeper = quota_group.start(["sleep", "30"])
    try:
        for _ in range(50):  # until the shell has moved itself into the cgroup and exec'd sleep
            if f"/{quota_group.inner.name}" in Path(f"/proc/{sleeper.pid}/cgroup").read_text():
                break
            time.sleep(0.05)
        budget = cpu_budget(Path(f"/proc/{sleeper.pid}"))
        assert budget.quota == 1.5  # set on the parent of the process's own cgroup
        assert budget.cpus == min(1, budget.affinity)
        assert budget.limited_by_quota == (budget.affinity > 1)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert cpu_budget().affinity == len(os.sched_getaffinity(0))


def fake_proc(tmp_path: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return proc


def test_cgroup_v2_cpu_max_as_a_container_sees_it(tmp_path):
    """cgroup v2 (no writable v2 cpu controller on this machine): a container whose own cgroup is the root of
    its mount, a quota on the container and a tighter one below it; "max" means none."""
    mount = tmp_path / "sys fs cgroup"  # a space: mountinfo escapes it
    (mount / "app").mkdir(parents=True)
    (mount / "cpu.max").write_text("400000 100000\n")  # the container: 4 CPUs
    (mount / "app" / "cpu.max").write_text("max 100000\n")
    escaped = str(mount).replace(" ", "\\040")
    mountinfo = (f"30 25 0:26 /kubepods/pod7/c1 {escaped} rw,nosuid - cgroup2 cgroup2 rw\n"
                 "31 25 0:27 / /proc rw - proc proc rw\n")
    proc = fake_proc(tmp_path, "0::/kubepods/pod7/c1/app\n", mountinfo)
    assert cgroup_cpu_quota(proc) == 4.0
    (mount / "app" / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(proc) == 1.5
    (mount / "cpu.max").write_text("max 100000\n")
    (mount / "app" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(proc) is None


@pytest.mark.parametrize("quota_group", [1.0], indirect=True)
def test_a_run_under_a_one_cpu_quota_uses_one_thread_and_no_worker(quota_group, tmp_path):
    """python train.py with data.num_workers=auto on a machine of 2+ cores limited to 1 CPU: the auto worker
    count is 1 CPU less the training process (0), torch trains on one thread, and run.json says so."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs a machine with 2 or more cores to show the quota, not the cores, deciding")
    run_dir = tmp_path / "run"
    args = [a for a in FAST_TRAIN if not a.startswith("data.num_workers")]
    command = [sys.executable, str(ROOT / "train.py"), *args, "trainer.max_epochs=1", "trainer.limit_train_batches=2",
               "trainer.limit_val_batches=1", "test=false", f"hydra.run.dir={run_dir}"]
    env = subprocess_env(tmp_path)
    env.pop("OMP_NUM_THREADS", None)  # torch's own default (every core), as a user's shell has it; not the test worker's share
    process = quota_group.start(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    speed = json.loads((run_dir / "run.json").read_text())["speed"]
    affinity = len(os.sched_getaffinity(0))
    assert speed["cpus"] == {"cpus": 1, "affinity": affinity, "quota": 1.0, "torch_threads": 1}, speed
    assert speed["num_workers"] == 0
    assert f"CPU quota: 1 CPU(s) of the {affinity} cores this process sees (cgroup): 1 torch thread(s)" in stdout
