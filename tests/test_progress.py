"""The sweep's progress bar: counts and result lines, fed by every executor.

The executors run stand-in workers (a few lines of Python that write a summary or exit
with an error) so that what is tested is the bookkeeping, not training."""

import io
import json
import sys

import pytest

from zoology import launch
from zoology.progress import SweepProgress
from zoology.runs import RunDir


class Recorder(SweepProgress):
    """Counts as the bar does, and remembers the most runs it saw running at once."""

    def __init__(self, total):
        super().__init__(total, enabled=False)
        self.peak = 0
        self.ticks = 0

    def started(self, run):
        super().started(run)
        self.peak = max(self.peak, len(self.running))

    def tick(self):
        self.ticks += 1


def worker(run_dir, status, seconds=0.5):
    """A stand-in worker: sleeps, then writes a summary with ``status`` (or exits 3 without one)."""
    if status is None:
        code = f"import time; time.sleep({seconds}); raise SystemExit(3)"
    else:
        summary = json.dumps({"status": status, "experiment": "exp", "run_id": run_dir.path.name})
        code = (f"import pathlib, time; time.sleep({seconds}); "
                f"pathlib.Path({str(run_dir.path / 'summary.json')!r}).write_text({summary!r})")
    return [sys.executable, "-c", code]


def jobs(tmp_path, statuses, seconds=0.5):
    out = []
    for i, status in enumerate(statuses):
        run_dir = RunDir(tmp_path, "exp", f"r{i}")
        out.append((run_dir, worker(run_dir, status, seconds), "exp"))
    return out


def reporter(progress):
    def report(summary, run_dir):
        progress.finished(run_dir, summary["status"], f"{run_dir.path.name}: {summary['status']}")
    return report


def test_bar_shows_counts_and_prints_results_above_it(capsys):
    buf = io.StringIO()
    progress = SweepProgress(3, enabled=True, file=buf)
    progress.started("a")
    progress.started("b")
    assert "0/3 runs" in buf.getvalue() and "sweep: " in buf.getvalue() and "done 0 · failed 0 · running 2" in buf.getvalue()
    progress.finished("a", "done", "a: done · test/accuracy 0.9")
    progress.finished("b", "failed", "b: failed · ValueError")
    progress.started("c")
    progress.finished("c", "diverged", "c: diverged")
    progress.close()
    assert "3/3 runs" in buf.getvalue()
    assert "done 1 · failed 1 · diverged 1 · running 0" in buf.getvalue()
    assert capsys.readouterr().out.splitlines() == ["a: done · test/accuracy 0.9", "b: failed · ValueError", "c: diverged"]


def test_disabled_bar_prints_only_the_result_lines(capsys):
    progress = SweepProgress(1, enabled=False)
    progress.started("a")
    progress.finished("a", "done", "a: done")
    progress.close()
    captured = capsys.readouterr()
    assert captured.out == "a: done\n" and captured.err == ""


def test_local_workers_feed_the_bar(tmp_path, capsys):
    progress = Recorder(3)
    failed = launch.run_local(jobs(tmp_path, ["done", None, "done"]), 2, reporter(progress), progress)
    assert failed == 1
    assert progress.counts == {"done": 2, "failed": 1} and not progress.running
    assert progress.peak == 2 and progress.ticks > 0  # two workers at a time, redrawn while waiting
    assert sorted(capsys.readouterr().out.splitlines()) == ["r0: done", "r1: failed", "r2: done"]


def test_in_process_runs_feed_the_bar(tmp_path, monkeypatch, capsys):
    import zoology.train

    def fake_train(exp, run_dir, quiet=False, point=None):
        if exp.run_id == "bad":
            raise ValueError("boom")
        return {"status": "done", "experiment": exp.name, "run_id": exp.run_id}

    class Exp:
        def __init__(self, run_id):
            self.name, self.run_id = "exp", run_id

    monkeypatch.setattr(zoology.train, "train", fake_train)
    todo = [(None, Exp(i), RunDir(tmp_path, "exp", i)) for i in ("a", "bad", "c")]
    progress = Recorder(3)
    assert launch.run_inline(todo, True, reporter(progress), progress) == 1
    assert progress.counts == {"done": 2, "failed": 1} and progress.peak == 1
    assert capsys.readouterr().out.splitlines() == ["a: done", "bad: failed", "c: done"]


def test_ray_tasks_feed_the_bar(tmp_path, capsys):
    pytest.importorskip("ray")
    progress = Recorder(2)
    failed = launch.run_ray(jobs(tmp_path, ["done", None], seconds=2.0), None, 1.0, 0.0, reporter(progress), progress)
    assert failed == 1 and progress.counts == {"done": 1, "failed": 1} and not progress.running
    assert progress.peak >= 1  # seen starting (its worker.log) before it ended
    assert sorted(capsys.readouterr().out.splitlines()) == ["r0: done", "r1: failed"]
