"""Run directories a careless or hostile user cannot corrupt: confined paths, one writer,
verified bytes, exact bookkeeping across resumes, bounds at load, messages not tracebacks,
and signals that reach --parallel workers."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from zoology import checkpoint, tensorfile
from zoology.cache import cache_path
from zoology.cli import main
from zoology.config import load_experiment
from zoology.data import build_splits
from zoology.runs import RunDir

from .conftest import BASE, install_plugin

TINY = BASE.replace("max_epochs = 1", "max_epochs = 3")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (what must not change)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def flip_a_data_byte(path: Path) -> None:
    """Flip one bit of the tensor data (the header stays valid: safetensors alone would not notice)."""
    raw = bytearray(path.read_bytes())
    header = int.from_bytes(raw[:8], "little")
    raw[8 + header + (len(raw) - 8 - header) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


# -- confinement -------------------------------------------------------------------------


@pytest.mark.parametrize(("override", "key"), [
    ('name="/tmp/elsewhere"', "name"),
    ('name="../../x"', "name"),
    ('name=".."', "name"),
    ('run_id="."', "run_id"),
    ('run_id="../../../x"', "run_id"),
    ('run_id="a/b"', "run_id"),
    ('name="a\\u0000b"', "name"),
    ('name=".hidden"', "name"),
])
def test_names_that_would_escape_out_are_refused(write, tmp_path, capsys, override, key):
    exp = write(TINY)
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir(), outside.mkdir()
    (outside / "config.toml").write_text("precious")
    before = snapshot(tmp_path)
    assert main(["run", str(exp), "--out", str(out), "--quiet", "--set", override, "--rerun"]) == 2
    err = capsys.readouterr().err
    assert f"{key}: must be 1-200 letters, digits or ._+=-" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before  # nothing created, deleted or changed anywhere


def test_a_symbolic_link_out_of_out_is_refused(write, tmp_path, capsys):
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir(), outside.mkdir()
    (out / "exp").symlink_to(outside)
    assert main(["run", str(write(TINY)), "--out", str(out), "--quiet"]) == 2
    assert "outside" in capsys.readouterr().err and not any(outside.iterdir())


def test_sweep_ids_from_values_are_sanitised(write, tmp_path):
    exp = write(TINY + '\n[sweep]\n"model.sequence_mixer" = [{ label = "../a b", name = "attention", num_heads = 2 }]\n')
    from zoology.config import load_points

    [(point, e)] = load_points(exp)
    assert e.run_id == point.run_id == ".._a_b".replace(".", "_", 1)  # no leading dot, no separator


@pytest.mark.parametrize("out", ["file", "/dev/null", "/proc/zoology-cannot-write"])
def test_out_must_be_a_writable_folder_before_anything_is_generated(write, tmp_path, capsys, out):
    target = tmp_path / "a-file" if out == "file" else Path(out)
    if out == "file":
        target.write_text("x")
    assert main(["run", str(write(TINY)), "--out", str(target), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--out {target}" in err and "Traceback" not in err


# -- one writer ----------------------------------------------------------------------------


def test_a_second_writer_is_refused_and_a_sweep_skips_the_locked_point(write, tmp_path, capsys):
    exp = write(TINY)
    run = RunDir(tmp_path, "exp", "default")
    with run.lock():
        assert main(["run", str(exp), "--out", str(tmp_path), "--quiet"]) == 2
        assert f"run default is being written by another process (pid {os.getpid()})" in capsys.readouterr().err
        assert not (run.path / "summary.json").exists()
        # a subprocess is refused the same way (the lock is the kernel's, not this process's)
        proc = subprocess.run([sys.executable, "-m", "zoology", "run", str(exp), "--out", str(tmp_path), "--quiet",
                               "--rerun"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and f"(pid {os.getpid()})" in proc.stderr
    sweep = write(TINY + '\n[sweep]\n"train.learning_rate" = [1e-3, 2e-3]\n', "sweep.toml")
    with RunDir(tmp_path, "sweep", "lr1e-3").lock():
        assert main(["run", str(sweep), "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "sweep/lr1e-3: skipped: run lr1e-3 is being written by another process" in out
    assert json.loads((tmp_path / "sweep" / "lr2e-3" / "summary.json").read_text())["status"] == "done"
    assert not (tmp_path / "sweep" / "lr1e-3" / "summary.json").exists()


def test_a_killed_writer_leaves_no_stale_lock(write, tmp_path):
    exp = write(TINY.replace("max_epochs = 3", "max_epochs = 50"))
    proc = subprocess.Popen([sys.executable, "-m", "zoology", "run", str(exp), "--out", str(tmp_path), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = tmp_path / "exp" / "default" / ".lock"
    deadline = time.time() + 120
    while time.time() < deadline and not (lock.exists() and lock.read_text().strip()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with RunDir(tmp_path, "exp", "default").lock():  # the kernel dropped it
        pass


# -- checked bytes -------------------------------------------------------------------------


def test_a_flipped_bit_in_the_cache_is_detected_and_regenerated(write, tmp_path):
    exp = load_experiment(write(TINY.replace("[data]", f'[data]\ncache_dir = "{tmp_path / "cache"}"')))
    clean = build_splits(exp)
    task = exp.data.train[0]
    path = cache_path(tmp_path / "cache", task, clean["train"].seeds[0])
    flip_a_data_byte(path)
    with pytest.warns(RuntimeWarning, match=rf"{path}: unusable .*does not match the sha256"):
        again = build_splits(exp)
    assert torch.equal(again["train"].inputs, clean["train"].inputs)
    assert torch.equal(again["train"].labels, clean["train"].labels)
    tensorfile.load(path)  # rewritten, verifies


def test_flipped_checkpoint_falls_back_to_the_previous_or_says_rerun(write, tmp_path, capsys):
    exp = write(TINY)
    assert main(["run", str(exp), "--out", str(tmp_path), "--quiet"]) == 0
    run = tmp_path / "exp" / "default"
    done = json.loads((run / "summary.json").read_text())
    shutil.copytree(run / checkpoint.CURRENT, run / checkpoint.PREVIOUS)  # an older copy that verifies
    flip_a_data_byte(run / checkpoint.CURRENT / "model.safetensors")
    (run / "summary.json").write_text(json.dumps({**done, "status": "running"}))  # as if killed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["run", str(exp), "--out", str(tmp_path), "--quiet"]) == 0
    assert any("checkpoint/model.safetensors" in str(w.message) and "falling back" in str(w.message)
               for w in caught)
    assert json.loads((run / "summary.json").read_text())["test"] == done["test"]
    # both copies damaged: a clear error naming the files, and the way out
    flip_a_data_byte(run / checkpoint.PREVIOUS / "optimizer.safetensors")
    (run / "summary.json").write_text(json.dumps({**done, "status": "running"}))
    assert main(["run", str(exp), "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.old/optimizer.safetensors" in err and "--rerun" in err and "Traceback" not in err
    assert main(["run", str(exp), "--out", str(tmp_path), "--quiet", "--rerun"]) == 0
    assert json.loads((run / "summary.json").read_text())["test"] == done["test"]


def test_corrupt_checkpoint_state_names_the_file(write, tmp_path, capsys):
    exp = write(TINY)
    assert main(["run", str(exp), "--out", str(tmp_path), "--quiet"]) == 0
    run = tmp_path / "exp" / "default"
    (run / checkpoint.CURRENT / checkpoint.STATE).write_text("{not json")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    assert main(["run", str(exp), "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "state.json: unreadable" in err and "--rerun" in err and "JSONDecodeError" not in err


def test_identical_runs_write_identical_model_files(write, tmp_path):
    exp = write(TINY)
    for out in ("a", "b"):
        assert main(["run", str(exp), "--out", str(tmp_path / out), "--quiet"]) == 0
    a, b = (tmp_path / out / "exp" / "default" / "model.safetensors" for out in ("a", "b"))
    assert a.read_bytes() == b.read_bytes()
    tensors, meta = tensorfile.load(a)
    assert meta["run_id"] == "default" and "lm_head.weight" in tensors


# -- bookkeeping across resumes ----------------------------------------------------------------


def test_killed_after_the_last_checkpoint_keeps_the_last_epochs_metrics(write, tmp_path):
    exp = write(TINY)
    assert main(["run", str(exp), "--out", str(tmp_path), "--quiet"]) == 0
    run = tmp_path / "exp" / "default"
    first = json.loads((run / "summary.json").read_text())
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    # killed after the last checkpoint, before the summary was written
    (run / "summary.json").write_text(json.dumps({"status": "running", "experiment": "exp", "run_id": "default"}))
    assert main(["run", str(exp), "--out", str(tmp_path), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final"] == {k: v for k, v in last.items() if k.startswith("valid/")}
    assert summary["test"] == first["test"] and summary["best"] == first["best"]
    assert [a["ended"] for a in summary["attempts"]] == ["interrupted", "done"]
    assert summary["attempts"][0]["epochs"] == [1, 3]
    assert summary["wall_time_s"] > first["wall_time_s"] * 0.5  # the first attempt's time counts too


# -- bounds and messages -----------------------------------------------------------------


@pytest.mark.parametrize(("override", "key"), [
    ("data.train.0.num_examples=1_000_000_000_000", "data.train[0].num_examples"),
    ("data.*.input_seq_len=1_000_000_000", "data.train[0].input_seq_len"),
    ("model.d_model=10_000_000", "model.d_model"),
    ("model.n_layers=1_000_000", "model.n_layers"),
    ("data.*.vocab_size=2_000_000_000", "model.vocab_size"),
])
def test_impossible_sizes_are_refused_at_load_naming_the_key(write, tmp_path, capsys, override, key):
    exp = write(TINY)
    start = time.time()
    assert main(["validate", str(exp), "--set", override]) == 2
    err = capsys.readouterr().err
    assert f"{key}: needs about" in err and "--force" in err
    assert time.time() - start < 60
    assert main(["run", str(exp), "--out", str(tmp_path), "--set", override]) == 2
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("data.seed=-1", "data.seed: must be between 0 and 4294967295, got -1"),
    ("train.seed=4294967296", "train.seed: must be between 0 and 4294967295"),
    ("train.max_grad_norm=-1.0", "train.max_grad_norm: must be >= 0.0, got -1.0"),
])
def test_seeds_and_clipping_are_range_checked(write, capsys, override, message):
    assert main(["validate", str(write(TINY)), "--set", override]) == 2
    assert message in capsys.readouterr().err


def test_deep_nesting_and_long_keys_are_messages(write, tmp_path, capsys):
    deep = write("a = " + "[" * 3000 + "]" * 3000 + "\n", "deep.toml")
    assert main(["validate", str(deep)]) == 2
    assert "nested too deeply" in capsys.readouterr().err
    assert main(["validate", str(write(TINY)), "--set", "name=" + "[" * 3000 + "]" * 3000]) == 2
    assert "nested too deeply" in capsys.readouterr().err
    assert main(["validate", str(write(TINY)), "--set", ".".join(["a"] * 5000) + "=1"]) == 2
    assert "at most 64 parts" in capsys.readouterr().err
    # a run directory whose config.toml is too deep to read is still reported
    run = RunDir(tmp_path, "exp", "r1")
    run.write_text("config.toml", "a = " + "[" * 3000 + "]" * 3000)
    run.write_json("summary.json", {"status": "failed", "experiment": "exp", "run_id": "r1"})
    assert main(["report", str(tmp_path), "--csv", str(tmp_path / "r.csv")]) == 0
    assert "exp/r1" in capsys.readouterr().out


def test_inf_as_a_sweep_value_and_capped_errors(write, capsys):
    exp = write(TINY + '\n[sweep]\n"train.learning_rate" = [inf]\n')
    assert main(["validate", str(exp)]) == 2
    assert "train.learning_rate: run lrinf: must be between 0.0 and 10.0, got inf" in capsys.readouterr().err
    many = write(TINY.replace("[train]", "[train]\n" + "\n".join(f"k{i} = 1" for i in range(500))), "many.toml")
    assert main(["validate", str(many)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 52 and err[-1].endswith("… and 450 more")  # "error:", 50 problems, the count


def test_strict_plugin_failure_is_reported_once(write, tmp_path, monkeypatch, capsys):
    install_plugin(tmp_path / "site", monkeypatch, "broken", "import does_not_exist\n")
    monkeypatch.setenv("ZOOLOGY_STRICT_PLUGINS", "1")
    from zoology.config import converter
    from zoology.plugins import get_registry

    get_registry.cache_clear()
    converter.cache_clear()
    try:
        assert main(["validate", str(write(TINY))]) == 2
    finally:
        get_registry.cache_clear()
        converter.cache_clear()
    err = capsys.readouterr().err
    assert err.count("does_not_exist") == 1 and "data.train" not in err and "zoology plugin 'broken'" in err


# -- signals ---------------------------------------------------------------------------------


def test_sigterm_to_the_parallel_parent_stops_and_records_its_workers(write, tmp_path):
    exp = write(TINY.replace("num_examples = 32", "num_examples = 128").replace("max_epochs = 3", "max_epochs = 25")
                + '\n[sweep]\n"train.learning_rate" = [1e-3, 2e-3]\n')
    cmd = [sys.executable, "-m", "zoology", "run", str(exp), "--out", str(tmp_path), "--parallel", "2", "--quiet"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    parent = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    runs = [tmp_path / "exp" / rid for rid in ("lr1e-3", "lr2e-3")]
    deadline = time.time() + 240
    while time.time() < deadline and not all(checkpoint.find(r) for r in runs):  # both past their 1st epoch
        time.sleep(0.05)
    workers = [int((r / ".lock").read_text()) for r in runs]
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=120)
    assert parent.returncode == 130, err[-2000:]
    for pid in workers:  # no worker left running unsupervised
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert [json.loads((r / "summary.json").read_text())["status"] for r in runs] == ["interrupted"] * 2
    # a plain rerun resumes both from their checkpoints and finishes them
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    for r in runs:
        summary = json.loads((r / "summary.json").read_text())
        assert summary["status"] == "done" and summary["resumed_from_epoch"] >= 1
        assert [a["ended"] for a in summary["attempts"]] == ["interrupted", "done"]
