"""Ray with logical GPUs on a CPU machine (`ray.init(num_gpus=2)`): each task is scheduled
with the GPUs it asked for and sees them, a real run that sees none fails loudly, and
Ctrl-C ends the workers. One Ray start for the module."""

import json
import os
import re
import sys
import textwrap
import time

import pytest

from zoology import launch
from zoology.cli import main
from zoology.runs import RunDir

from .conftest import BASE

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def probe(folder, barrier: int = 1) -> list[str]:
    """A worker command that waits until ``barrier`` probes run at once, then prints what it sees."""
    return [sys.executable, "-c", textwrap.dedent(f"""
        import os, pathlib, time
        here = pathlib.Path({str(folder)!r})
        (here / f"{{os.getpid()}}.started").touch()
        end = time.time() + 120
        while len(list(here.glob("*.started"))) < {barrier} and time.time() < end:
            time.sleep(0.05)
        print("sees", os.environ.get("CUDA_VISIBLE_DEVICES"), os.environ.get("{launch.GPUS_ENV}"))
    """)]


def run_probes(tmp_path, n: int, gpus: float | None) -> list[list[str]]:
    jobs = [(RunDir(tmp_path, "exp", f"r{i}"), probe(tmp_path, barrier=n), "exp") for i in range(n)]
    assert launch.run_ray(jobs, None, 1, gpus, lambda summary, run_dir: None) == 0
    logs = [(d.path / "worker.log").read_text().splitlines() for d, _, _ in jobs]
    return [[line for line in log if line.startswith(("ray task", "sees"))] for log in logs]


def test_each_task_gets_the_gpu_it_asked_for(tmp_path, capsys):
    """Default on a cluster with GPUs: 1 per run. Both tasks run at once (a barrier), so Ray
    must give them different GPUs; each sees exactly its own."""
    seen = run_probes(tmp_path, 2, None)
    assert "each 1 CPU(s) and 1 GPU(s) (cluster: 2 CPUs, 2 GPUs)" in capsys.readouterr().err
    devices = []
    for header, sees in seen:
        assert ", 1 GPU(s), GPU ids [" in header
        _, visible, given = sees.split()
        assert given == "1" and visible in header
        devices.append(visible)
    assert sorted(devices) == ["0", "1"]


def test_a_task_with_two_gpus_sees_both(tmp_path):
    [(header, sees)] = run_probes(tmp_path, 1, 2)
    _, visible, given = sees.split()
    assert given == "2" and sorted(visible.split(",")) == ["0", "1"] and "2 GPU(s)" in header


def test_a_run_that_sees_no_gpu_fails_loudly(write, tmp_path, capsys):
    """Ray gave the task GPU 0, but this torch sees no CUDA device: the run fails at once,
    saying why, instead of training on the CPU."""
    out = tmp_path / "runs"
    assert main(["run", str(write(BASE)), "--out", str(out), "--backend", "ray"]) == 1
    summary = json.loads((out / "exp" / "default" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert "worker exited with code 2: error: ZOOLOGY_GPUS_PER_RUN" in summary["error"]
    assert "needs 1 GPU(s) but sees 0" in summary["error"]


def test_ctrl_c_cancels_tasks_and_ends_their_workers(tmp_path):
    slow_pid = tmp_path / "slow.pid"
    slow = [sys.executable, "-c", f"import os, time; open({str(slow_pid)!r}, 'w').write(str(os.getpid())); "
                                  "time.sleep(600)"]
    quick = [sys.executable, "-c", f"import os, time\nwhile not os.path.exists({str(slow_pid)!r}): time.sleep(0.05)"]
    jobs = [(RunDir(tmp_path, "exp", "slow"), slow, "exp"), (RunDir(tmp_path, "exp", "quick"), quick, "exp")]

    def interrupt(summary, run_dir):  # Ctrl-C while the slow run is still training
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        launch.run_ray(jobs, None, 1, 0, interrupt)
    pid = int(slow_pid.read_text())
    end = time.time() + 30
    while time.time() < end and _alive(pid):
        time.sleep(0.1)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_one_actor_trains_run_after_run_in_one_worker(tmp_path):
    """Runs of 2 CPUs on a 2-CPU cluster: one actor, whose persistent worker process takes
    all three runs (each worker.log names the worker's pid) — start-up paid once."""
    jobs = [(RunDir(tmp_path, "exp", f"r{i}"), probe(tmp_path), "exp") for i in range(3)]
    assert launch.run_ray(jobs, None, 2, 0, lambda summary, run_dir: None) == 0
    pids = set()
    for d, _, _ in jobs:
        log = (d.path / "worker.log").read_text()
        assert "ray task on node" in log and "sees" in log
        pids.add(re.search(r"zoology worker (\d+): python -c", log).group(1))
    assert len(pids) == 1


def test_a_failed_run_gets_a_fresh_worker(tmp_path):
    """After a run that exits non-zero the actor replaces its worker: the next run's pid differs."""
    bad = [sys.executable, "-c", "import sys; sys.exit(3)"]
    jobs = [(RunDir(tmp_path, "exp", "bad"), bad, "exp"), (RunDir(tmp_path, "exp", "ok"), probe(tmp_path), "exp")]
    codes = {}
    failed = launch.run_ray(jobs, None, 2, 0, lambda summary, run_dir: codes.update({run_dir.path.name: summary}))
    assert failed == 1 and codes["bad"]["status"] == "failed" and "worker exited with code 3" in codes["bad"]["error"]
    assert codes["ok"] == {}  # it exited 0 (a real run writes its own summary)
    pids = [re.search(r"zoology worker (\d+):", (d.path / "worker.log").read_text()).group(1) for d, _, _ in jobs]
    assert pids[0] != pids[1]


def test_a_launch_command_runs_as_its_own_process_group(tmp_path):
    """A run's ``accelerate launch`` (G > 1) is not handed to the persistent worker: it runs as
    its own process (group), with the actor's environment, its output in worker.log."""
    sh = ["/bin/sh", "-c", f'echo "launched $$ with {launch.GPUS_ENV}=${launch.GPUS_ENV}"']
    jobs = [(RunDir(tmp_path, "exp", "multi"), sh, "exp")]
    assert launch.run_ray(jobs, None, 1, 0, lambda summary, run_dir: None) == 0
    log = (jobs[0][0].path / "worker.log").read_text()
    assert f"with {launch.GPUS_ENV}=0" in log and "zoology worker" not in log
