"""Devices, exactly: which GPUs and threads each worker gets and how it is started (CUDA
mocked), the precision rule, a fresh Accelerator per run, `--dry-run --json` for job arrays,
and models whose parameters share one buffer saving and loading."""

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from zoology import checkpoint, launch, tensorfile
from zoology.cli import main
from zoology.config import load_experiment
from zoology.plugins import get_registry
from zoology.runs import RunDir

from .conftest import BASE, install_plugin

SWEEP4 = BASE + '\n[sweep]\n"model.d_model" = [16, 24, 32, 40]\n'
IDS4 = ["d16", "d24", "d32", "d40"]


@pytest.fixture
def machine(monkeypatch):
    """A machine with ``gpus`` CUDA devices (0: none) and 16 cores, seen through a
    ``CUDA_VISIBLE_DEVICES`` of ``visible`` (None: unset); no executor settings inherited."""

    def _machine(gpus: int, visible: str | None = None) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(os, "cpu_count", lambda: 16)
        for name in ("CUDA_VISIBLE_DEVICES", launch.GPUS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "WORLD_SIZE",
                     "ACCELERATE_MIXED_PRECISION"):
            monkeypatch.delenv(name, raising=False)
        if visible is not None:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)

    return _machine


@pytest.fixture
def started(monkeypatch):
    """Record every worker job or process (command, environment) instead of starting it;
    each 'exits' 0."""
    seen: list[tuple[list[str], dict[str, str]]] = []

    class Pool:
        """launch.WorkerPool's stand-in: a job's command with its slot's environment."""

        def __init__(self, env):
            self.env, self.ended = env, {}

        def send(self, slot, cmd, log):
            seen.append((cmd, self.env(slot) if self.env else None))
            self.ended[slot] = 0

        def wait(self, slots, timeout):
            return {s: self.ended.pop(s) for s in slots if s in self.ended}

        def stop(self, slot):
            pass

        def stop_all(self, sig=None, busy=frozenset()):
            return {}

    class Finished:
        returncode = 0

        def __init__(self, cmd, env=None, **kwargs):
            seen.append((cmd, env))

        def poll(self):
            return 0

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(launch.subprocess, "Popen", Finished)
    monkeypatch.setattr(launch, "WorkerPool", Pool)
    return seen


def worker_cmd(path, run_id, out, quiet=True):
    return [sys.executable, "-m", "zoology", "run", str(path), "--only", run_id, "--out", str(out),
            *(["--quiet"] if quiet else [])]


def test_visible_gpus_follow_cuda_visible_devices(machine):
    machine(4)
    assert launch.visible_gpus() == ["0", "1", "2", "3"]
    machine(4, "4,5,6,7")
    assert launch.visible_gpus() == ["4", "5", "6", "7"]
    machine(2, "GPU-8f3e, GPU-77aa")  # UUIDs pass through as named
    assert launch.visible_gpus() == ["GPU-8f3e", "GPU-77aa"]
    machine(0, "")
    assert launch.visible_gpus() == []
    machine(0, "0,1")  # listed, but this torch sees no GPU (CPU build, no driver)
    assert launch.visible_gpus() == []


@pytest.mark.parametrize("gpus, visible, flags, n_runs, devices, threads", [
    # each run one of the parent's GPUs, never 0..3 when the user gave 4..7
    (4, "4,5,6,7", [], 4, ["4", "5", "6", "7"], "4"),
    (4, None, [], 4, ["0", "1", "2", "3"], "4"),
    # G = 2: visible ÷ G workers, each two GPUs
    (4, "4,5,6,7", ["--gpus-per-run", "2"], 2, ["4,5", "6,7"], "8"),
    (4, None, ["--gpus-per-run", "2"], 2, ["0,1", "2,3"], "8"),
    # more workers than GPU groups: groups are shared round robin
    (4, "4,5,6,7", ["--gpus-per-run", "2", "--parallel", "4"], 4, ["4,5", "6,7", "4,5", "6,7"], "4"),
    (1, None, ["--parallel", "2"], 2, ["0", "0"], "8"),
    # CPU runs on a GPU machine see no GPU; on a CPU machine the variable is left alone
    (4, "4,5,6,7", ["--gpus-per-run", "0", "--parallel", "2"], 2, ["", ""], "8"),
    (0, None, ["--parallel", "2"], 2, [None, None], "8"),
])
def test_each_worker_gets_its_devices(machine, started, write, tmp_path, gpus, visible, flags, n_runs, devices,
                                      threads, capsys):
    machine(gpus, visible)
    path, out = write(SWEEP4), tmp_path / "runs"
    ids = IDS4[:n_runs]
    assert main(["run", str(path), "--out", str(out), *flags, *[a for i in ids for a in ("--only", i)]]) == 0
    g = next((flags[i + 1] for i, f in enumerate(flags) if f == "--gpus-per-run"), "1" if gpus else "0")
    assert [cmd for cmd, _ in started] == [worker_cmd(path, i, out) for i in ids]
    assert [env.get("CUDA_VISIBLE_DEVICES") for _, env in started] == devices
    for _, env in started:
        assert (env[launch.GPUS_ENV], env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) == (g, threads, threads)
    assert f"local workers: {len(ids)} run(s) at a time, {g} GPU(s) each" in capsys.readouterr().err


def test_a_worker_with_two_gpus_starts_an_accelerate_launch(machine, started, write, tmp_path, monkeypatch):
    """Inside the worker of a G = 2 slot (what run_local gave it): one accelerate launch of 2
    processes on its two GPUs, with the experiment's precision, sharing its threads."""
    machine(2, "6,7")
    monkeypatch.setenv(launch.GPUS_ENV, "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    path, out = write(SWEEP4.replace("[train]", '[train]\nmixed_precision = "bf16"')), tmp_path / "runs"
    assert main(["run", str(path), "--only", "d24", "--out", str(out), "--quiet"]) == 0
    [(cmd, env)] = started
    assert cmd == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--gpu_ids", "all", "--main_process_port", "0",
                   "--mixed_precision", "bf16", *worker_cmd(path, "d24", out)[1:]]
    assert (env["CUDA_VISIBLE_DEVICES"], env[launch.GPUS_ENV], env["OMP_NUM_THREADS"]) == ("6,7", "2", "4")


def test_gpus_per_run_two_by_hand_launches_on_the_first_two(machine, started, write, tmp_path, capsys):
    """`zoology run EXP --only ID --gpus-per-run 2` (e.g. a job-array task): output to the terminal."""
    machine(4)
    path, out = write(SWEEP4), tmp_path / "runs"
    assert main(["run", str(path), "--only", "d16", "--out", str(out), "--gpus-per-run", "2"]) == 0
    [(cmd, env)] = started
    assert cmd[:7] == [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                       "--num_machines"]
    assert cmd[cmd.index("-m", 3):] == ["-m", *worker_cmd(path, "d16", out, quiet=False)[2:]]
    assert (env["CUDA_VISIBLE_DEVICES"], env[launch.GPUS_ENV], env["OMP_NUM_THREADS"]) == ("0,1", "2", "8")
    assert "accelerate launch of 2 processes on GPUs 0,1" in capsys.readouterr().err


def test_one_gpu_runs_in_this_process(machine, started, write, tmp_path, monkeypatch):
    machine(1, "5")
    monkeypatch.setenv(launch.GPUS_ENV, "1")
    trained = []
    monkeypatch.setattr(launch, "run_inline", lambda todo, quiet, report, progress=None: trained.extend(todo) or 0)
    path = write(SWEEP4)
    assert main(["run", str(path), "--only", "d32", "--out", str(tmp_path), "--quiet"]) == 0
    assert started == [] and [exp.run_id for _, exp, _ in trained] == ["d32"]


def test_accelerate_launch_accepts_the_command(tmp_path):
    """The real `accelerate launch` (on CPU) takes our flags and starts 2 ranks that keep
    our CUDA_VISIBLE_DEVICES and threads and get our precision."""
    # each rank writes its own file: two ranks printing to one pipe can interleave their lines
    (tmp_path / "zprobe.py").write_text(
        "import json, os, pathlib\nenv = {k: os.environ.get(k) for k in ('LOCAL_RANK', 'WORLD_SIZE', "
        "'CUDA_VISIBLE_DEVICES', 'ACCELERATE_MIXED_PRECISION', 'OMP_NUM_THREADS')}\n"
        f"pathlib.Path({str(tmp_path)!r}, 'rank' + env['LOCAL_RANK'] + '.json').write_text(json.dumps(env))\n")
    path = os.pathsep.join([str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "3"}
    proc = subprocess.run(launch.accelerate_command([sys.executable, "-m", "zprobe"], 2, "no"), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert ranks == [{"LOCAL_RANK": str(r), "WORLD_SIZE": "2", "CUDA_VISIBLE_DEVICES": "",
                      "ACCELERATE_MIXED_PRECISION": "no", "OMP_NUM_THREADS": "3"} for r in (0, 1)]


def test_ray_default_is_one_gpu_where_the_cluster_has_some():
    assert launch.ray_default_gpus({"CPU": 64.0}) == 0
    assert launch.ray_default_gpus({"CPU": 64.0, "GPU": 8.0}) == 1


def test_a_run_given_gpus_that_sees_none_fails_loudly(machine, write, tmp_path, capsys, monkeypatch):
    machine(0)
    monkeypatch.setenv(launch.GPUS_ENV, "1")  # what a Ray task or a local slot with one GPU says
    assert main(["run", str(write(BASE)), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{launch.GPUS_ENV}" in err and "needs 1 GPU(s) but sees 0" in err and "refusing" in err
    # the executor records that message as the run's error
    run_dir = RunDir(tmp_path, "exp", "default")
    run_dir.path.mkdir(parents=True)
    (run_dir.path / "worker.log").write_text("some output\n" + err)
    summary = launch.record_exit(run_dir, "default", "exp", 2)
    assert summary["status"] == "failed" and "needs 1 GPU(s) but sees 0" in summary["error"]


def test_bad_device_requests_are_errors(machine, write, tmp_path, capsys, monkeypatch):
    path = str(write(BASE))
    machine(0)
    assert main(["run", path, "--gpus-per-run", "1"]) == 2
    assert "needs 1 GPU(s) but sees 0" in capsys.readouterr().err
    machine(2)
    assert main(["run", path, "--gpus-per-run", "0.5"]) == 2
    assert "whole number" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["run", path, "--parallel", "2"]) == 2
    assert "launcher has done that" in capsys.readouterr().err
    assert main(["run", path, "--json"]) == 2


# -- job arrays: --dry-run --json ---------------------------------------------------------


def test_dry_run_json_lists_runs_and_resources(machine, write, tmp_path, capsys):
    machine(4, "4,5,6,7")
    path, out = write(SWEEP4), tmp_path / "runs"
    assert main(["run", str(path), "--out", str(out), "--gpus-per-run", "2", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert (plan["backend"], plan["parallel"], plan["mode"], plan["gpus_per_run"], plan["cpus_per_run"]) == \
        ("local", 2, "workers", 2, 8)
    assert plan["gpus_per_worker"] == [["4", "5"], ["6", "7"]]
    assert [r["run_id"] for r in plan["runs"]] == IDS4
    assert plan["runs"][1] == {"run_id": "d24", "experiment": "exp", "run_dir": str(out / "exp" / "d24"),
                               "status": None, "gpus": 2, "cpus": 8, "sweep": {"model.d_model": "24"}}
    assert not out.exists()
    assert main(["run", str(path), "--out", str(out), "--gpus-per-run", "2", "--dry-run"]) == 0
    assert "local (workers): 2 run(s) at a time, 2 GPU(s) each (4,5 | 6,7), 8 CPU thread(s) each" in \
        capsys.readouterr().out
    assert main(["run", str(path), "--backend", "ray", "--dry-run"]) == 0  # Ray: decided by the cluster
    printed = capsys.readouterr().out
    assert "ray: each run 1 CPU(s) and 1 GPU if the cluster has GPUs, else 0" in printed


def test_slurm_array_example(machine, write, tmp_path, capsys):
    """README's job-array recipe: run ids from `--dry-run --json` (read with its jq filter),
    one `--only ID` per array task; a task re-run after its run is done only skips it."""
    machine(0)
    readme = Path(__file__).resolve().parents[1] / "README.md"
    script = readme.read_text(encoding="utf-8").split("#SBATCH --array", 1)[1].split("```", 1)[0]
    assert 'jq -r ".runs[$SLURM_ARRAY_TASK_ID].run_id" runs.json' in script
    assert 'zoology run "$EXP" --only "$ID"' in script
    path, out = write(BASE + '\n[sweep]\n"model.d_model" = [16, 24]\n'), tmp_path / "runs"
    assert main(["run", str(path), "--out", str(out), "--dry-run", "--json"]) == 0
    listing = capsys.readouterr().out
    (tmp_path / "runs.json").write_text(listing)
    task = 1  # $SLURM_ARRAY_TASK_ID
    if shutil.which("jq"):
        run_id = subprocess.run(["jq", "-r", f".runs[{task}].run_id", str(tmp_path / "runs.json")],
                                capture_output=True, text=True, check=True).stdout.strip()
    else:
        run_id = json.loads(listing)["runs"][task]["run_id"]
    assert run_id == "d24" and json.loads(listing)["runs"][task]["gpus"] == 0
    assert main(["run", str(path), "--out", str(out), "--only", run_id, "--quiet"]) == 0
    summary = json.loads((out / "exp" / "d24" / "summary.json").read_text())
    assert (summary["status"], summary["device_type"], summary["device_count"]) == ("done", "cpu", 1)
    assert main(["run", str(path), "--out", str(out), "--only", run_id]) == 0
    assert "already done, skipped" in capsys.readouterr().out
    assert main(["run", str(path), "--out", str(out), "--dry-run", "--json"]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)["runs"]] == [None, "done"]


# -- precision, and a fresh Accelerator per run --------------------------------------------


def test_precision_conflict_warns_naming_both(machine, write, monkeypatch):
    from zoology.train import make_accelerator

    machine(0)
    bf16 = load_experiment(write(BASE.replace("[train]", '[train]\nmixed_precision = "bf16"')))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # plain `accelerate launch`
    with pytest.warns(UserWarning, match=r"says 'no', the experiment's train.mixed_precision says 'bf16'; "
                                         r"using 'bf16'"):
        make_accelerator(bf16)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # agreeing: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_accelerator(bf16)


def test_runs_of_any_precision_share_a_process(machine, write, monkeypatch):
    """No Accelerate state to reset: precision is the trainer's, accumulation the experiment's
    (not ACCELERATE_GRADIENT_ACCUMULATION_STEPS)."""
    from zoology.train import Precision, make_accelerator

    machine(0)
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    for mode, steps in (("bf16", 2), ("no", 1), ("bf16", 1)):
        exp = load_experiment(write(BASE.replace("[train]", f'[train]\nmixed_precision = "{mode}"\n'
                                                            f'gradient_accumulation_steps = {steps}')))
        acc = make_accelerator(exp)
        assert (acc.mixed_precision, acc.gradient_accumulation_steps) == ("no", steps)
        precision = Precision(mode, acc.device)
        with precision.autocast():
            y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
        assert y.dtype == (torch.bfloat16 if mode == "bf16" else torch.float32)


def test_fp16_loss_scaling_skips_bad_steps_and_round_trips():
    from zoology.train import Precision

    precision = Precision("fp16", torch.device("cpu"))  # GradScaler works on CPU too
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    scale = precision.scaler.get_scale()
    precision.scale(w.sum() * float("inf")).backward()
    precision.unscale_(opt)
    precision.step(opt)
    assert torch.equal(w.detach(), torch.ones(3)) and precision.scaler.get_scale() == scale / 2
    opt.zero_grad()
    precision.scale(w.sum()).backward()
    precision.unscale_(opt)
    torch.testing.assert_close(w.grad, torch.ones(3))  # true gradients after unscaling
    precision.step(opt)
    assert torch.allclose(w.detach(), torch.full((3,), 0.9))
    again = Precision("fp16", torch.device("cpu"))
    again.load_state_dict(json.loads(json.dumps(precision.state_dict())))  # as a checkpoint keeps it
    assert again.scaler.get_scale() == scale / 2


# -- models whose parameters share storage --------------------------------------------------

FLAT = '''
import torch
import zoology


class FlatPair(torch.nn.Module):
    """Two projections whose weights are views of one flat buffer, as cuDNN lays out an RNN's.

    Args:
        d_model: model width
    """

    name = "flat_pair"

    def __init__(self, d_model: int) -> None:
        super().__init__()
        flat = torch.randn(2 * d_model * d_model) / d_model ** 0.5
        self.w_in = torch.nn.Parameter(flat[: d_model * d_model].view(d_model, d_model))
        self.w_out = torch.nn.Parameter(flat[d_model * d_model:].view(d_model, d_model))

    def forward(self, x):
        return torch.tanh(x @ self.w_in) @ self.w_out

    def state_size(self, seq_len: int) -> int:
        return 0


@zoology.hookimpl
def zoology_register_mixers(register):
    register(FlatPair)
'''


@pytest.fixture
def flat_pair(tmp_path, monkeypatch):
    install_plugin(tmp_path / "site", monkeypatch, "flat", FLAT)
    get_registry.cache_clear()
    yield
    get_registry.cache_clear()
    sys.modules.pop("zoo_flat", None)


def test_shared_storage_model_saves_in_run_dir_and_checkpoint(flat_pair, write, tmp_path):
    from safetensors.torch import save_model as safetensors_save_model

    from zoology.model import LanguageModel

    text = BASE.replace('sequence_mixer = { name = "attention", num_heads = 2 }',
                        'sequence_mixer = { name = "flat_pair" }').replace("max_epochs = 1", "max_epochs = 2")
    path = write(text)
    exp = load_experiment(path)
    model = LanguageModel(exp)
    mixer = model.blocks[0].sequence_mixer
    assert mixer.w_in.untyped_storage().data_ptr() == mixer.w_out.untyped_storage().data_ptr()
    with pytest.raises(RuntimeError, match="no suitable name to keep"):
        safetensors_save_model(model, str(tmp_path / "fails.safetensors"))  # the bug, reproduced

    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet"]) == 0
    run = tmp_path / "runs" / "exp" / "default"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done"
    assert (summary["mixed_precision"], summary["device_type"], summary["device_count"]) == ("no", "cpu", 1)

    def shares(m):
        flat = m.blocks[0].sequence_mixer
        return flat.w_in.untyped_storage().data_ptr() == flat.w_out.untyped_storage().data_ptr()

    fresh = LanguageModel(exp)
    tensorfile.load_module(run / "model.safetensors", fresh)  # the selected model, verified
    saved, _ = tensorfile.load(run / "model.safetensors")
    for name, tensor in fresh.state_dict().items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)
    assert shares(fresh) and fresh.lm_head.weight is fresh.token_embedding.weight

    # the checkpoint (model, optimizer, best model) loads into a fresh model too
    ckpt = checkpoint.read(checkpoint.find(run), rank=0)
    assert ckpt["state"]["epoch"] == 2 and ckpt["optimizer"]["state"] and ckpt["best"] is not None
    again = LanguageModel(exp)
    again.load_state_dict(ckpt["model"], strict=True)
    assert shares(again)
    assert torch.equal(again.blocks[0].sequence_mixer.w_in, ckpt["model"]["blocks.0.sequence_mixer.w_in"])
