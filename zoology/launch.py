"""Executors for many runs: in this process, in local worker processes, or on Ray actors,
and how each run gets its devices.

Workers (:mod:`zoology.worker`, persistent: run after run) run ``python -m zoology run EXP
--only RUN_ID`` so that a run that crashes or is killed takes nothing else down: its log is
kept and it is recorded as failed. In this
process, a run that raises is recorded as failed (traceback in ``error.log``) and the next
one starts. A pack (``--pack``, :mod:`zoology.pack`) is one job: its worker runs
``--only`` each of its runs with ``--pack``, every member's run directory holds the
worker's ``worker.log`` (one file, hard-linked), and each member is recorded on its own.

Devices: a local worker gets ``CUDA_VISIBLE_DEVICES`` set to its share of the GPUs *this*
process sees (the entries of ``CUDA_VISIBLE_DEVICES`` when it is set, else every GPU), G per
run (``--gpus-per-run``). A Ray actor gets the GPUs Ray assigns it. Either way the worker is
told G in ``ZOOLOGY_GPUS_PER_RUN``; a run that was given G GPUs and sees fewer fails at once
instead of training on the CPU, and a run with G > 1 starts itself again as an
``accelerate launch`` of G data-parallel processes, one per GPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import attrs

from zoology.errors import UserError
from zoology.runs import SUMMARY, RunDir, RunLocked

if TYPE_CHECKING:
    from zoology.config import Experiment
    from zoology.progress import SweepProgress
    from zoology.sweep import Point

Report = Callable[[dict[str, Any], RunDir], None]
# a job for a worker: its run directory (a pack's: a list of them), its command, the experiment's name
Job = tuple["RunDir | list[RunDir]", list[str], str]

GPUS_ENV = "ZOOLOGY_GPUS_PER_RUN"  # what the executor gave a worker: the GPUs of one run


def worker_command(experiment: Path, run_id: str | list[str], out: Path, overrides: list[str], rerun: bool,
                   quiet: bool = True) -> list[str]:
    """The command of a worker that trains one run, or (``run_id`` a list) those runs as one pack."""
    ids = [run_id] if isinstance(run_id, str) else run_id
    cmd = [sys.executable, "-m", "zoology", "run", str(experiment), *(a for i in ids for a in ("--only", i)),
           "--out", str(out)]
    cmd += ["--pack", str(len(ids))] if len(ids) > 1 else []
    cmd += ["--quiet"] if quiet else []
    for text in overrides:
        cmd += ["--set", text]
    return cmd + (["--rerun"] if rerun else [])


def accelerate_command(cmd: list[str], processes: int, mixed_precision: str) -> list[str]:
    """``cmd`` (``python -m zoology ...``) as a data-parallel ``accelerate launch`` of
    ``processes`` processes on the first ``processes`` GPUs this process sees.

    Every flag that decides placement is explicit, so an ``accelerate config`` file cannot
    move the run to other GPUs (``--gpu_ids all`` leaves ``CUDA_VISIBLE_DEVICES`` alone), and
    each launch picks a free port, so several can share a machine. ``--mixed_precision``
    repeats the experiment's own (which decides anyway; see ``train.make_accelerator``)."""
    if cmd[1:2] != ["-m"]:
        raise ValueError(f"expected a `python -m module ...` command, got {cmd[:3]}")
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--gpu_ids", "all", "--main_process_port", "0",
            "--mixed_precision", mixed_precision, *cmd[1:]]


def distributed_launch() -> bool:
    """Whether this process is one of several started by torchrun / ``accelerate launch``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use, named as ``CUDA_VISIBLE_DEVICES`` names them (indices,
    UUIDs or MIG ids): its entries when it is set, else ``0 … n-1``. No more than torch
    counts: CUDA ignores the entries after an invalid one, and a CPU-only torch counts none."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [name.strip() for name in listed.split(",") if name.strip()][:count]


def _why_no_gpus(visible: list[str]) -> str:
    import torch

    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if torch.version.cuda is None and torch.version.hip is None:
        return f"this torch ({torch.__version__}) is built without CUDA"
    if listed is not None:
        return f"CUDA_VISIBLE_DEVICES={listed!r}, torch counts {len(visible)}"
    return f"torch counts {len(visible)} (CUDA_VISIBLE_DEVICES is not set)"


def ray_default_gpus(cluster: dict[str, float]) -> int:
    """``--gpus-per-run`` on Ray when not given: 1 if the cluster has GPUs, else 0."""
    return 1 if cluster.get("GPU", 0) >= 1 else 0


@attrs.frozen
class LocalPlan:
    """How this machine's devices are shared out among local runs.

    ``slots[s]`` are the GPUs of worker slot ``s`` (``CUDA_VISIBLE_DEVICES`` entries). The
    visible GPUs are cut into groups of G; with more workers than groups, workers share
    groups round robin (small models: several runs per GPU). CPU threads are split evenly.
    ``mode`` says how the runs start: ``inline`` (in this process, one after another),
    ``launch`` (one after another, each an ``accelerate launch`` of G processes) or
    ``workers`` (``parallel`` worker processes at a time)."""

    visible: list[str]
    gpus_per_run: int
    parallel: int
    threads: int
    slots: list[list[str]]

    @property
    def mode(self) -> str:
        if self.parallel > 1 or (self.gpus_per_run == 0 and self.visible):
            return "workers"  # a CPU run on a GPU machine needs the GPUs hidden: a worker
        return "launch" if self.gpus_per_run > 1 else "inline"

    def env(self, slot: int, processes: int = 1) -> dict[str, str]:
        """The environment of the run in ``slot``; its CPU threads are shared by its ``processes``."""
        env = dict(os.environ)
        if self.visible:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.slots[slot])  # "" hides every GPU (G = 0)
        env[GPUS_ENV] = str(self.gpus_per_run)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(max(1, self.threads // processes))
        return env

    def describe(self) -> str:
        where = " | ".join(",".join(s) for s in self.slots) if self.gpus_per_run else "CPU"
        return (f"{self.parallel} run(s) at a time, {self.gpus_per_run} GPU(s) each ({where}), "
                f"{self.threads} CPU thread(s) each")


def plan_local(parallel: int | None, gpus_per_run: float | None, runs: int) -> LocalPlan:
    """Share the GPUs this process sees (and its cores) among ``runs`` runs.

    ``gpus_per_run`` (G) defaults to the executor's ``ZOOLOGY_GPUS_PER_RUN`` in a worker, else
    to 1 on a GPU machine and 0 without one; ``parallel`` to visible GPUs ÷ G (1 on CPU),
    and never more than ``runs``. The cores (in a worker: the threads its executor gave it)
    are split evenly among the runs. A run given G GPUs that sees fewer is an error, not a
    silent CPU run."""
    visible = visible_gpus()
    given_by = "--gpus-per-run"
    if gpus_per_run is None and os.environ.get(GPUS_ENV):
        given_by = f"{GPUS_ENV} (set by the executor that started this run)"
        try:
            gpus_per_run = float(os.environ[GPUS_ENV])
        except ValueError:
            raise UserError(f"{GPUS_ENV}={os.environ[GPUS_ENV]!r}: not a number") from None
        gpus_per_run = math.ceil(gpus_per_run)  # a Ray task with a fraction of a GPU sees one
    if gpus_per_run is None:
        gpus = 1 if visible else 0
    elif gpus_per_run < 0 or gpus_per_run != int(gpus_per_run):
        raise UserError(f"--gpus-per-run {gpus_per_run:g}: locally a whole number of GPUs per run "
                        "(--parallel larger than the GPU count shares GPUs between runs)")
    else:
        gpus = int(gpus_per_run)
    if gpus > len(visible):
        raise UserError(f"{given_by} {gpus}: this run needs {gpus} GPU(s) but sees {len(visible)} "
                        f"({_why_no_gpus(visible)}); refusing to train on the CPU instead")
    groups = [visible[i:i + gpus] for i in range(0, len(visible) - gpus + 1, gpus)] if gpus else [[]]
    if parallel is not None and parallel < 1:
        raise UserError(f"--parallel {parallel}: must be at least 1")
    n = max(1, min(parallel or len(groups), runs))
    cores = os.cpu_count() or 1
    if os.environ.get(GPUS_ENV) and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        cores = int(os.environ["OMP_NUM_THREADS"])  # a worker: its executor gave it this many
    threads = max(1, cores // n)
    return LocalPlan(visible, gpus, n, threads, [groups[s % len(groups)] for s in range(n)])


def record_failure(run_dir: RunDir, experiment: str, run_id: str, error: str) -> dict[str, Any]:
    """Write and return the summary of a run that failed with ``error``."""
    summary = {"status": "failed", "experiment": experiment, "run_id": run_id, "error": error}
    run_dir.write_json(SUMMARY, summary)
    return summary


FINAL = ("failed", "done", "diverged")


def job_dirs(run_dir: RunDir | list[RunDir]) -> list[RunDir]:
    """The run directories of a job: one, or a pack's."""
    return run_dir if isinstance(run_dir, list) else [run_dir]


def open_log(dirs: list[RunDir]) -> IO[bytes]:
    """``worker.log`` of a job, opened for writing in its first run directory and shared with the others."""
    for d in dirs:
        d.path.mkdir(parents=True, exist_ok=True)
    log = open(dirs[0].path / "worker.log", "wb")  # noqa: SIM115 (the caller closes it)
    share_log(dirs)
    return log


def share_log(dirs: list[RunDir]) -> None:
    """Hard-link the first run directory's ``worker.log`` into the others (a pack's members),
    replacing theirs; where the file system cannot link, only the first has it."""
    for d in dirs[1:]:
        target = d.path / "worker.log"
        with contextlib.suppress(OSError):
            target.unlink(missing_ok=True)
            os.link(dirs[0].path / "worker.log", target)


def _last_error(log: Path) -> str | None:
    """The last ``error: ...`` line the worker printed (a user error: exit code 2)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    lines = [line for line in tail.splitlines() if line.startswith("error:")]
    return lines[-1] if lines else None


def record_exit(run_dir: RunDir, run_id: str, experiment: str, code: int,
                interrupted: bool = False, log: str | None = "worker.log") -> dict[str, Any]:
    """The worker's summary; if it ended without writing a final one, a failed one (with the
    worker's own error message when it printed one to ``log``), or, when we stopped it, an
    interrupted one that a rerun resumes. Nothing is written while another process holds
    the run's lock: that run is reported skipped."""
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
                said = _last_error(run_dir.path / log) if log else None
                where = f"see {log}" if log else "see its output"
                summary = record_failure(run_dir, experiment, run_id,
                                         f"{how}{': ' + said if said else ''} ({where})")
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


def run_launched(jobs: list[tuple[RunDir, list[str], str]], env: dict[str, str], report: Report,
                 progress: SweepProgress | None = None) -> int:
    """Run each (run dir, command, experiment name) to its end, one after another, its output
    going to ours (the ``accelerate launch`` of a run with several GPUs)."""
    failed = 0
    for run_dir, cmd, name in jobs:
        if progress is not None:
            progress.started(run_dir)
        proc = subprocess.Popen(cmd, env=env)
        try:
            with stop_on_sigterm():
                code = proc.wait()
        except (KeyboardInterrupt, Stopped) as exc:  # stop the launch (it stops its ranks), record
            sig = signal.SIGTERM if isinstance(exc, Stopped) else signal.SIGINT
            proc.send_signal(sig)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            report(record_exit(run_dir, run_dir.path.name, name, proc.returncode or -sig, interrupted=True,
                               log=None), run_dir)
            raise KeyboardInterrupt from None
        summary = record_exit(run_dir, run_dir.path.name, name, code, log=None)
        failed += summary.get("status") == "failed"
        report(summary, run_dir)
    return failed


def run_local(jobs: list[Job], parallel: int, report: Report,
              progress: SweepProgress | None = None, env: Callable[[int], dict[str, str]] | None = None) -> int:
    """Run each (run dir or a pack's run dirs, command, experiment name) in a worker process,
    ``parallel`` at a time; ``env(slot)`` is the environment (devices, threads) of the worker
    in that slot (:meth:`LocalPlan.env`; None: this process's).

    Workers persist (:mod:`zoology.worker`): the one in a slot takes the next job when its
    last one ended well, and is replaced after a job that failed or killed it."""
    pending = list(jobs)
    pool = WorkerPool(env)
    running: dict[int, tuple[RunDir | list[RunDir], str]] = {}
    try:
        with stop_on_sigterm():
            return _supervise(pending, running, parallel, pool, report, progress)
    except (KeyboardInterrupt, Stopped) as exc:  # stop the workers, wait for them, record
        sig = signal.SIGTERM if isinstance(exc, Stopped) else signal.SIGINT
        codes = pool.stop_all(sig, busy=set(running))
        for slot, (run_dir, name) in running.items():
            for d in job_dirs(run_dir):
                report(record_exit(d, d.path.name, name, codes.get(slot) or -sig, interrupted=True), d)
        raise KeyboardInterrupt from None
    finally:
        pool.stop_all()


def _supervise(pending: list[Job], running: dict[int, Any], parallel: int, pool: WorkerPool,
               report: Report, progress: SweepProgress | None) -> int:
    failed = 0
    while pending or running:
        for slot in range(parallel):
            if slot not in running and pending:
                run_dir, cmd, name = pending.pop(0)
                dirs = job_dirs(run_dir)
                log = open_log(dirs)  # created (and linked into every member's directory) here
                log.close()
                pool.send(slot, cmd, dirs[0].path / "worker.log")
                running[slot] = (run_dir, name)
                if progress is not None:
                    for d in dirs:
                        progress.started(d)
        ended = pool.wait(set(running), timeout=0.2)
        if progress is not None:
            progress.tick()
        for slot, code in ended.items():
            run_dir, name = running.pop(slot)
            if code != 0:  # a fresh process for the next job: nothing a failed run left behind carries over
                pool.stop(slot)
            for d in job_dirs(run_dir):
                summary = record_exit(d, d.path.name, name, code)
                failed += summary.get("status") == "failed"
                report(summary, d)
    return failed


class WorkerPool:
    """Persistent worker processes (:mod:`zoology.worker`), one per slot, started on demand
    with that slot's environment."""

    def __init__(self, env: Callable[[int], dict[str, str]] | None) -> None:
        self.env = env
        self.procs: dict[int, subprocess.Popen] = {}

    def send(self, slot: int, cmd: list[str], log: Path) -> None:
        """Give the worker of ``slot`` (started if there is none) the job ``cmd``
        (``python -m zoology run ...``), its output going to ``log``."""
        from zoology import worker

        if cmd[0] != sys.executable:
            raise ValueError(f"expected a command of this Python ({sys.executable}), got {cmd[0]}")
        proc = self.procs.get(slot)
        if proc is None or proc.poll() is not None:
            proc = self.procs[slot] = subprocess.Popen(
                worker.command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env=self.env(slot) if self.env else None)
        proc.stdin.write(json.dumps({"argv": cmd[1:], "log": str(log)}) + "\n")
        proc.stdin.flush()

    def wait(self, slots: set[int], timeout: float) -> dict[int, int]:
        """Wait up to ``timeout`` s for jobs to end; the exit code of each that did, by slot
        (a worker that died: its own exit code, negative for a signal)."""
        procs = {self.procs[s].stdout: s for s in slots}
        if not procs:
            time.sleep(timeout)
            return {}
        ready, _, _ = select.select(list(procs), [], [], timeout)
        ended = {}
        for stream in ready:
            slot = procs[stream]
            line = stream.readline()
            ended[slot] = int(line) if line.strip() else self._reap(slot)
        return ended

    def _reap(self, slot: int) -> int:
        proc = self.procs.pop(slot)
        code = proc.wait()
        return code if code != 0 else 1  # a worker that ended mid-job did not finish it

    def stop(self, slot: int) -> None:
        """End the worker of ``slot`` (it finishes nothing: called when it is idle)."""
        proc = self.procs.pop(slot, None)
        if proc is not None:
            _close(proc)

    def stop_all(self, sig: int | None = None, busy: set[int] = frozenset()) -> dict[int, int]:
        """End every worker; with ``sig``, first send it to the busy ones and give them 60 s
        to record their runs. The busy workers' exit codes, by slot."""
        codes = {}
        if sig is not None:
            for slot in busy:
                if slot in self.procs:
                    self.procs[slot].send_signal(sig)
        for slot in list(self.procs):
            proc = self.procs.pop(slot)
            _close(proc)
            if slot in busy:
                codes[slot] = proc.returncode
        return codes


def _close(proc: subprocess.Popen, grace: float = 60.0) -> None:
    """Close a worker's stdin (it ends after its job) and wait for it; kill it after ``grace`` s."""
    with contextlib.suppress(OSError):  # a worker that died: its stdin's pipe is broken
        proc.stdin.close()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc.stdout.close()


class RayWorker:
    """A Ray actor holding one persistent worker process (:mod:`zoology.worker`) that trains
    the runs this actor is given, one after another: a run does not pay a fresh process's
    start-up. The worker gets the actor's GPUs (Ray sets ``CUDA_VISIBLE_DEVICES`` for the
    actor), G in ``ZOOLOGY_GPUS_PER_RUN`` and C threads; after a run that did not end with 0
    it is replaced, as in the local executor. Threaded (two calls at once), so :meth:`stop`
    can end a run while :meth:`run` waits for it."""

    def __init__(self, cpus: float, gpus: float) -> None:
        self.cpus, self.gpus = cpus, gpus
        self.env = dict(os.environ, OMP_NUM_THREADS=str(max(1, int(cpus))), **{GPUS_ENV: f"{gpus:g}"})
        self.pool = WorkerPool(lambda slot: self.env)
        self.launched: subprocess.Popen | None = None  # a run's ``accelerate launch`` (G > 1)

    def run(self, cmd: list[str], log_path: str) -> int:
        """Train one run (or pack): ``cmd`` is ``python -m zoology run ...``; its exit code."""
        import ray

        with open(log_path, "ab") as log:
            log.write((f"ray task on node {ray.get_runtime_context().get_node_id()}: {self.cpus:g} CPU(s), "
                       f"{self.gpus:g} GPU(s), GPU ids {ray.get_gpu_ids()}, "
                       f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}\n").encode())
        python = Path(cmd[0]).name.startswith("python") and cmd[1:2] in (["-m"], ["-c"])
        if python and cmd[2:3] != ["accelerate.commands.launch"]:
            cmd = [sys.executable, *cmd[1:]]  # this node's Python
        else:  # an ``accelerate launch`` of G processes: a process group of its own, as it always was
            with open(log_path, "ab") as log:
                self.launched = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                 start_new_session=True)
            return self.launched.wait()
        self.pool.send(0, cmd, Path(log_path))
        ended: dict[int, int] = {}
        while not ended:
            try:
                ended = self.pool.wait({0}, timeout=1.0)
            except (KeyError, ValueError, OSError):  # stop() took the worker away mid-run
                return -signal.SIGTERM
        if ended[0] != 0:
            self.pool.stop(0)
        return ended[0]

    def stop(self) -> None:
        """End the worker; a run under way gets SIGTERM and up to 60 s to record itself."""
        if self.launched is not None and self.launched.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.launched.pid, signal.SIGTERM)
            try:
                self.launched.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.launched.pid, signal.SIGKILL)
        self.pool.stop_all(signal.SIGTERM, busy={0})


def run_ray(jobs: list[Job], address: str | None, cpus: float, gpus: float | None,
            report: Report, progress: SweepProgress | None = None) -> int:
    """Runs (or packs) on Ray actors (``pip install zoology[ray]``); paths must be shared by the nodes.

    As many :class:`RayWorker` actors as the cluster fits (C CPUs and G GPUs each), each
    training run after run in one persistent process. ``gpus`` None: 1 per run if the
    cluster has GPUs, else 0. Ctrl-C ends the runs under way (their workers record them as
    interrupted, so a rerun resumes them) and the actors."""
    try:
        import ray
    except ImportError:
        raise UserError("--backend ray needs Ray: pip install 'zoology[ray]'") from None

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    actors: list[Any] = []
    try:
        cluster = ray.cluster_resources()
        if gpus is None:
            gpus = ray_default_gpus(cluster)
        fits = min([len(jobs)] + [int(cluster.get(kind, 0) // need) for kind, need in (("CPU", cpus), ("GPU", gpus))
                                  if need > 0])
        print(f"ray: {len(jobs)} run(s), each {cpus:g} CPU(s) and {gpus:g} GPU(s) "
              f"(cluster: {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs)", file=sys.stderr, flush=True)
        actor_class = ray.remote(RayWorker).options(num_cpus=cpus, num_gpus=gpus, max_concurrency=2, max_restarts=0)
        actors = [actor_class.remote(cpus, gpus) for _ in range(max(1, fits))]
        pending = list(jobs)
        for run_dir, _, _ in jobs:
            for d in job_dirs(run_dir):
                d.path.mkdir(parents=True, exist_ok=True)
        futures: dict[Any, tuple[Any, Job]] = {}  # running: its actor and job
        submitted = time.time()

        waiting: set[Any] = set()  # for the progress bar: not yet seen starting

        def give(actor: Any) -> None:
            run_dir, cmd, _ = job = pending.pop(0)
            future = actor.run.remote(cmd, str(job_dirs(run_dir)[0].path / "worker.log"))
            futures[future] = (actor, job)
            waiting.add(future)

        for actor in actors[: len(pending)]:
            give(actor)
        failed = 0
        try:
            with stop_on_sigterm():
                while futures:
                    done, _ = ray.wait(list(futures), num_returns=1, timeout=1.0 if progress else None)
                    if progress is not None:
                        _ray_started({f: (job[0], job[2]) for f, (_, job) in futures.items()}, waiting, submitted, progress)
                        progress.tick()
                    if not done:
                        continue
                    actor, (run_dir, _, name) = futures.pop(done[0])
                    waiting.discard(done[0])
                    failed += _collect(ray, done[0], run_dir, name, report)
                    if pending:
                        if _dead(ray, done[0]):  # the actor died with its run: a fresh one for the next
                            actor = actor_class.remote(cpus, gpus)
                            actors.append(actor)
                        give(actor)
        except (KeyboardInterrupt, Stopped):  # end the runs under way; a rerun resumes them
            ray.wait([a.stop.remote() for a, _ in futures.values()], num_returns=len(futures), timeout=90)
            for _, (run_dir, _, name) in futures.values():
                share_log(job_dirs(run_dir))
                for d in job_dirs(run_dir):
                    report(record_exit(d, d.path.name, name, -signal.SIGINT, interrupted=True), d)
            raise KeyboardInterrupt from None
        return failed
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_here:
            ray.shutdown()


def _dead(ray: Any, future: Any) -> bool:
    """Whether the actor that ran ``future`` died (its result is an actor error)."""
    try:
        ray.get(future)
        return False
    except ray.exceptions.RayActorError:
        return True
    except Exception:
        return False


def _collect(ray: Any, future: Any, run_dir: RunDir | list[RunDir], name: str, report: Report) -> int:
    """Record one finished Ray task; how many of its runs failed."""
    try:
        code, error = ray.get(future), None
    except Exception as exc:  # the task itself died (node lost, OOM-killed worker)
        code, error = 1, f"{type(exc).__name__}: {exc}\n"
    failed = 0
    share_log(job_dirs(run_dir))
    for d in job_dirs(run_dir):
        if error is not None:
            d.write_text("ray.log", error)
        summary = record_exit(d, d.path.name, name, code)
        report(summary, d)
        failed += summary.get("status") == "failed"
    return failed


def _ray_started(futures: dict[Any, tuple[RunDir | list[RunDir], str]], waiting: set[Any], since: float,
                 progress: SweepProgress) -> None:
    """Runs whose Ray task has begun: it opens its ``worker.log`` (on the shared file system)
    when it starts, so a log written since submission means the run is under way."""
    for future in list(waiting):
        dirs = job_dirs(futures[future][0])
        try:
            begun = (dirs[0].path / "worker.log").stat().st_mtime >= since - 1.0
        except OSError:
            continue
        if begun:
            waiting.discard(future)
            for d in dirs:
                progress.started(d)
