"""A persistent worker for ``zoology run --parallel N``: one process per slot that trains
job after job, so the start-up a fresh process pays for every run (importing torch and
the libraries, ≈ 1 s; the first AdamW step, ≈ 0.9 s) is paid once per worker.

The supervisor (``launch.run_local``) writes one job per line to the worker's stdin, as
JSON ``{"argv": [...], "log": PATH}``: ``argv`` is a Python command line without the
interpreter (``-m zoology run EXP --only ID ...``: one run or one pack), ``log`` the job's
``worker.log``. The worker runs it in-process with its output (file descriptors 1 and 2)
sent to that log, then writes the exit code as one line to its own stdout. It ends at the
end of its stdin.

Isolation: a job that raises is an exit code like any other; a job that kills the process
(a segfault, ``os._exit``, the OOM killer) ends only this worker, and the supervisor
records that job as failed and starts a fresh worker for the next one. After a job that
did not end with 0 the supervisor replaces the worker too, so nothing a failed run left
behind in the process reaches the next run.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
import traceback


def command() -> list[str]:
    """The command that starts a worker."""
    return [sys.executable, "-m", "zoology.worker"]


def run_job(argv: list[str], log_path: str) -> int:
    """``python ARGV`` (``-m MODULE ARGS...`` or ``-c CODE ARGS...``; the supervisor's jobs are
    ``-m zoology run ...``) in this process, stdout and stderr (the file descriptors, so
    libraries' output too) appended to ``log_path``; the exit code, as the process's would be."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2), sys.argv
    try:
        with open(log_path, "ab", buffering=0) as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            print(f"zoology worker {os.getpid()}: python {' '.join(argv)}", flush=True)
            try:
                _python(argv)
                return 0
            except SystemExit as exc:
                if exc.code is None or isinstance(exc.code, int):
                    return exc.code or 0
                print(exc.code, file=sys.stderr)
                return 1
            except Exception:
                traceback.print_exc()
                return 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        sys.argv = saved[2]


def _python(argv: list[str]) -> None:
    """What ``python ARGV`` would run, here."""
    if len(argv) >= 2 and argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    elif len(argv) >= 2 and argv[0] == "-c":
        sys.argv = ["-c", *argv[2:]]
        exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
    else:
        raise ValueError(f"a worker runs `python -m MODULE ...` or `python -c CODE ...`, not {argv[:2]}")


def main() -> int:
    results = os.fdopen(os.dup(1), "w", buffering=1)  # one line per job; jobs' output goes to their logs
    try:
        for line in sys.stdin:
            if line.strip():
                job = json.loads(line)
                code = run_job(job["argv"], job["log"])
                results.write(f"{code}\n")
    except KeyboardInterrupt:  # stopped between jobs (a job's own interrupt is its exit code, 130)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
