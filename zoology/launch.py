"""Executors for many runs: in this process, in local worker processes, or as Ray tasks.

Workers run ``python -m zoology run EXP --only RUN_ID`` so that a run that crashes or is
killed takes nothing else down: its log is kept and it is recorded as failed. In this
process, a run that raises is recorded as failed (traceback in ``error.log``) and the next
one starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoology.errors import UserError
from zoology.runs import SUMMARY, RunDir, RunLocked

if TYPE_CHECKING:
    from zoology.config import Experiment
    from zoology.progress import SweepProgress
    from zoology.sweep import Point

Report = Callable[[dict[str, Any], RunDir], None]


def worker_command(experiment: Path, run_id: str, out: Path, overrides: list[str], rerun: bool) -> list[str]:
    cmd = [sys.executable, "-m", "zoology", "run", str(experiment), "--only", run_id, "--out", str(out), "--quiet"]
    for text in overrides:
        cmd += ["--set", text]
    return cmd + (["--rerun"] if rerun else [])


def slot_env(slot: int, parallel: int) -> dict[str, str]:
    """Device hand-out: GPU ``slot % n`` when there are GPUs, else an equal share of the cores."""
    import torch

    env = dict(os.environ)
    if torch.cuda.is_available():
        env["CUDA_VISIBLE_DEVICES"] = str(slot % torch.cuda.device_count())
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = threads
    return env


def record_failure(run_dir: RunDir, experiment: str, run_id: str, error: str) -> dict[str, Any]:
    """Write and return the summary of a run that failed with ``error``."""
    summary = {"status": "failed", "experiment": experiment, "run_id": run_id, "error": error}
    run_dir.write_json(SUMMARY, summary)
    return summary


FINAL = ("failed", "done", "diverged")


def record_exit(run_dir: RunDir, run_id: str, experiment: str, code: int,
                interrupted: bool = False) -> dict[str, Any]:
    """The worker's summary; if it ended without writing a final one, a failed one (or,
    when we stopped it, an interrupted one that a rerun resumes). Nothing is written while
    another process holds the run's lock: that run is reported skipped."""
    summary = run_dir.read_json(SUMMARY) or {}
    if code == 0 or summary.get("status") in FINAL:
        return summary
    try:
        with run_dir.lock():
            if interrupted:
                summary = {**summary, "status": "interrupted", "experiment": experiment, "run_id": run_id}
                run_dir.write_json(SUMMARY, summary)
            else:
                how = f"killed by signal {-code}" if code < 0 else f"worker exited with code {code}"
                summary = record_failure(run_dir, experiment, run_id, f"{how} (see worker.log)")
    except RunLocked as exc:
        summary = {"status": "skipped", "experiment": experiment, "run_id": run_id, "error": str(exc)}
    return summary


class Stopped(Exception):
    """SIGTERM reached the parent of the workers."""


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into :class:`Stopped` while workers run (SIGINT is KeyboardInterrupt)."""
    def handler(signum: int, frame: Any) -> None:
        raise Stopped

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_inline(jobs: list[tuple[Point, Experiment, RunDir]], quiet: bool, report: Report,
               progress: SweepProgress | None = None) -> int:
    """Train each (sweep point, experiment, run dir) in this process, one after another."""
    from zoology.train import train

    failed = 0
    for point, exp, run_dir in jobs:
        if progress is not None:
            progress.started(run_dir)
        try:
            summary = train(exp, run_dir, quiet=quiet, point=point)
        except RunLocked as exc:
            if len(jobs) == 1:
                raise
            print(f"{exp.name}/{exp.run_id}: skipped: {exc}", flush=True)
            continue
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as exc:
            failed += 1
            run_dir.write_text("error.log", traceback.format_exc())
            summary = record_failure(run_dir, exp.name, exp.run_id, f"{type(exc).__name__}: {exc} (see error.log)")
        report(summary, run_dir)
    return failed


def run_local(jobs: list[tuple[RunDir, list[str], str]], parallel: int, report: Report,
              progress: SweepProgress | None = None) -> int:
    """Run each (run dir, command, experiment name) in a worker process, ``parallel`` at a time."""
    pending = list(jobs)
    running: dict[int, tuple[subprocess.Popen, RunDir, str, Any]] = {}
    try:
        with stop_on_sigterm():
            return _supervise(pending, running, parallel, report, progress)
    except (KeyboardInterrupt, Stopped) as exc:  # stop the workers, wait for them, record
        sig = signal.SIGTERM if isinstance(exc, Stopped) else signal.SIGINT
        for proc, *_ in running.values():
            proc.send_signal(sig)
        for proc, run_dir, name, log in running.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
            report(record_exit(run_dir, run_dir.path.name, name, proc.returncode or -sig, interrupted=True), run_dir)
        raise KeyboardInterrupt from None


def _supervise(pending: list[tuple[RunDir, list[str], str]], running: dict[int, Any], parallel: int,
               report: Report, progress: SweepProgress | None) -> int:
    failed = 0
    while pending or running:
        for slot in range(parallel):
            if slot not in running and pending:
                run_dir, cmd, name = pending.pop(0)
                run_dir.path.mkdir(parents=True, exist_ok=True)
                log = open(run_dir.path / "worker.log", "wb")  # noqa: SIM115 (closed when the worker ends)
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=slot_env(slot, parallel))
                running[slot] = (proc, run_dir, name, log)
                if progress is not None:
                    progress.started(run_dir)
        time.sleep(0.2)
        if progress is not None:
            progress.tick()
        for slot, (proc, run_dir, name, log) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            log.close()
            del running[slot]
            summary = record_exit(run_dir, run_dir.path.name, name, code)
            failed += summary.get("status") == "failed"
            report(summary, run_dir)
    return failed


def run_ray(jobs: list[tuple[RunDir, list[str], str]], address: str | None, cpus: float, gpus: float,
            report: Report, progress: SweepProgress | None = None) -> int:
    """Each run as a Ray task (``pip install zoology[ray]``); paths must be shared by the nodes."""
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray: pip install 'zoology[ray]'") from None

    @ray.remote(num_cpus=cpus, num_gpus=gpus)
    def execute(cmd: list[str], log_path: str) -> int:
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, int(cpus))))
        with open(log_path, "wb") as log:
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    try:
        futures = {}
        submitted = time.time()
        for run_dir, cmd, name in jobs:
            run_dir.path.mkdir(parents=True, exist_ok=True)
            futures[execute.remote(cmd, str(run_dir.path / "worker.log"))] = (run_dir, name)
        failed = 0
        remaining = list(futures)
        waiting = set(remaining)  # for the progress bar: not yet seen starting
        try:
            with stop_on_sigterm():
                while remaining:
                    done, remaining = ray.wait(remaining, num_returns=1, timeout=1.0 if progress else None)
                    if progress is not None:
                        _ray_started(futures, waiting, submitted, progress)
                        progress.tick()
                    if not done:
                        continue
                    waiting.discard(done[0])
                    failed += _collect(ray, done[0], *futures[done[0]], report)
        except (KeyboardInterrupt, Stopped):  # cancel what is left; a rerun resumes it
            for future in remaining:
                ray.cancel(future, force=True)
                run_dir, name = futures[future]
                report(record_exit(run_dir, run_dir.path.name, name, -signal.SIGINT, interrupted=True), run_dir)
            raise KeyboardInterrupt from None
        return failed
    finally:
        if started_here:
            ray.shutdown()


def _collect(ray: Any, future: Any, run_dir: RunDir, name: str, report: Report) -> int:
    """Record one finished Ray task; 1 if its run failed."""
    try:
        code = ray.get(future)
    except Exception as exc:  # the task itself died (node lost, OOM-killed worker)
        code = 1
        run_dir.write_text("ray.log", f"{type(exc).__name__}: {exc}\n")
    summary = record_exit(run_dir, run_dir.path.name, name, code)
    report(summary, run_dir)
    return int(summary.get("status") == "failed")


def _ray_started(futures: dict[Any, tuple[RunDir, str]], waiting: set[Any], since: float,
                 progress: SweepProgress) -> None:
    """Runs whose Ray task has begun: it opens its ``worker.log`` (on the shared file system)
    when it starts, so a log written since submission means the run is under way."""
    for future in list(waiting):
        log = futures[future][0].path / "worker.log"
        try:
            begun = log.stat().st_mtime >= since - 1.0
        except OSError:
            continue
        if begun:
            waiting.discard(future)
            progress.started(futures[future][0])
