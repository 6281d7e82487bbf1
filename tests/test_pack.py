"""Packed training (``--pack``): members train as their solo runs would, each keeping its
own run directory, early stopping and exact resume."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from zoology import pack
from zoology.cli import main
from zoology.config import load_experiment, load_points
from zoology.model import LanguageModel
from zoology.plugins import get_registry
from zoology.train import param_groups

from .conftest import install_plugin

# three members that differ in learning rate, weight decay, warmup, clipping and seed;
# 25 steps an epoch, so two epochs are the first 50 steps
EXP = """
[data]
batch_size = 8
seed = 3
[[data.train]]
task = "mqar"
num_examples = 200
vocab_size = 32
input_seq_len = 16
num_kv_pairs = 2
[[data.test]]
task = "mqar"
num_examples = 32
vocab_size = 32
input_seq_len = 16
num_kv_pairs = 2
[model]
d_model = 16
n_layers = 2
embed_dropout = 0.0
sequence_mixer = { name = "attention", num_heads = 2 }
[train]
max_epochs = 2
[sweep.hp]
"train.learning_rate" = [1e-3, 3e-3, 1e-2]
"train.weight_decay" = [0.0, 0.1, 0.3]
"train.seed" = [0, 1, 2]
"train.warmup_steps" = [0, 10, 0]
"train.max_grad_norm" = [0.0, 0.5, 1.0]
"""
IDS = ["lr1e-3", "lr3e-3", "lr0.01"]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def metrics(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in lines]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def assert_close_runs(packed: Path, solo: Path) -> None:
    """Same steps and learning rates; losses to float tolerance, accuracies within one
    flipped position; the selected model's weights to float tolerance."""
    a, b = metrics(packed), metrics(solo)
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        assert (ra["epoch"], ra["step"]) == (rb["epoch"], rb["step"])
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-12)
        for key in ra:
            if key.endswith("loss"):
                assert ra[key] == pytest.approx(rb[key], rel=1e-4), key
            elif key.endswith("accuracy"):
                assert ra[key] == pytest.approx(rb[key], abs=0.02), key
    wa, wb = load_file(str(packed / "model.safetensors")), load_file(str(solo / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        if key.endswith("Wqkv.bias"):
            # softmax ignores a shift of every key by the same vector, so the key bias's true
            # gradient is 0: what it gets is rounding noise, which Adam scales up to steps of
            # size lr in either run. Only the query and value biases are compared.
            q, _, v = wa[key].chunk(3)
            wa[key], wb[key] = torch.cat([q, v]), torch.cat([wb[key].chunk(3)[0], wb[key].chunk(3)[2]])
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5, msg=key)


# Mamba's scan is a hand-written autograd.Function whose vmap rules fold the members into its
# batch. Its learning rates stop at 3e-3: at 1e-2 with clipping, 50 steps of Adam amplify the
# last bits of float rounding (~2e-7 in the gradients) to 1e-4 in some weights.
MAMBA = EXP.replace('{ name = "attention", num_heads = 2 }', '{ name = "mamba", d_state = 4 }').replace(
    "[1e-3, 3e-3, 1e-2]", "[1e-3, 2e-3, 3e-3]")


@pytest.mark.parametrize("text", [EXP, MAMBA], ids=["attention", "mamba"])
def test_packed_members_match_their_solo_runs(text, write, tmp_path):
    path = write(text)
    assert main(["run", str(path), "--out", str(tmp_path / "solo"), "--quiet"]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "packed"), "--quiet", "--pack", "3"]) == 0
    ids = [e.run_id for _, e in load_points(path, [])]
    assert ids == (IDS if text is EXP else ["lr1e-3", "lr2e-3", "lr3e-3"])
    for run_id in ids:
        packed, solo = tmp_path / "packed" / "exp" / run_id, tmp_path / "solo" / "exp" / run_id
        assert_close_runs(packed, solo)
        s = summary(packed)
        assert s["status"] == "done" and s["train_steps"] == 50
        assert s["pack"] == {"size": 3, "runs": ids}
        assert "pack" not in summary(solo)
        # the checkpoint is a solo run's: the same files, the same tensors, the optimizer's too
        names = sorted(p.name for p in (packed / "checkpoint").iterdir())
        assert names == sorted(p.name for p in (solo / "checkpoint").iterdir())
        opt_p, opt_s = (load_file(str(d / "checkpoint" / "optimizer.safetensors")) for d in (packed, solo))
        assert opt_p.keys() == opt_s.keys()
        for key in opt_p:
            torch.testing.assert_close(opt_p[key], opt_s[key], rtol=1e-3, atol=1e-6, msg=key)


def test_a_member_that_stops_early_ends_like_a_solo_run(write, tmp_path):
    text = EXP.replace("max_epochs = 2", 'max_epochs = 3\nearly_stopping = { metric = "valid/loss", threshold = 0.0 }')
    text = text.replace('"train.max_grad_norm" = [0.0, 0.5, 1.0]',
                        '"train.max_grad_norm" = [0.0, 0.5, 1.0]\n"train.early_stopping.threshold" = [0.0, 9.0, 0.0]')
    path = write(text)
    assert main(["run", str(path), "--out", str(tmp_path / "solo"), "--quiet"]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "packed"), "--quiet", "--pack", "3"]) == 0
    for run_id, epochs in zip(IDS, [3, 1, 3]):  # lr3e-3 reaches valid/loss <= 9 after its first epoch
        packed, solo = tmp_path / "packed" / "exp" / run_id, tmp_path / "solo" / "exp" / run_id
        s = summary(packed)
        assert (s["status"], s["epochs"]) == ("done", epochs)
        assert s.keys() == summary(solo).keys() | {"pack"}
        assert sorted(p.name for p in packed.iterdir()) == sorted(p.name for p in solo.iterdir())
        assert_close_runs(packed, solo)


def test_resume_of_a_killed_pack_is_exact(write, tmp_path):
    path = write(EXP.replace("max_epochs = 2", "max_epochs = 6"))
    args = ["run", str(path), "--quiet", "--pack", "3"]
    assert main([*args, "--out", str(tmp_path / "straight")]) == 0

    out = tmp_path / "killed"
    runs = [out / "exp" / run_id for run_id in IDS]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "zoology", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if all((r / "metrics.jsonl").exists() and len((r / "metrics.jsonl").read_text().splitlines()) >= 2
               for r in runs):
            break
        time.sleep(0.02)
    time.sleep(0.1)  # into the third epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert all(summary(r)["status"] == "running" for r in runs)

    assert main([*args, "--out", str(out), "--resume"]) == 0
    for run_id, run in zip(IDS, runs):
        straight = tmp_path / "straight" / "exp" / run_id
        s = summary(run)
        assert s["status"] == "done" and s["resumed_from_epoch"] >= 1
        assert metrics(run) == metrics(straight)
        ta, tb = load_file(str(run / "model.safetensors")), load_file(str(straight / "model.safetensors"))
        assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_members_with_their_own_dropout_rates(tmp_path, write):
    """Members may differ in embedding dropout: each gets its own rate; a member at rate 0
    gets exactly its deterministic gradient."""
    exp = load_experiment(write(EXP.split("[sweep")[0]))
    torch.manual_seed(0)
    models = [LanguageModel(exp), LanguageModel(exp)]
    models[1].embed_dropout.p = 0.5
    stack = pack.Stack(models, [torch.optim.AdamW(param_groups(m, 0.1)) for m in models])
    assert isinstance(stack.base.embed_dropout, pack.MemberDropout)
    tokens = torch.randint(32, (2, 4, 16))
    labels = torch.where(torch.rand(tokens.shape) < 0.3, tokens, -100)
    grads, losses = stack.gradients(tokens, labels)
    model = models[0].train()
    scored = labels[0] != -100
    loss = torch.nn.functional.cross_entropy(model(tokens[0], scored), labels[0][scored])
    loss.backward()
    expected = torch.cat([p.grad.reshape(-1) for p in (dict(model.named_parameters())[n] for n in stack.names)])
    torch.testing.assert_close(losses[0], loss.detach())
    torch.testing.assert_close(grads[0], expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(grads[1], grads[0])


OLD_STYLE = '''
import torch
import zoology


class Twice(torch.autograd.Function):
    """An autograd.Function in the old style (ctx in forward, no setup_context): vmap refuses it."""

    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class OldStyle(torch.nn.Module):
    name = "old_style"

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(d_model, d_model)

    def forward(self, x):
        return Twice.apply(self.proj(x))

    def state_size(self, seq_len: int) -> int:
        return 0


@zoology.hookimpl
def zoology_register_mixers(register):
    register(OldStyle)
'''


@pytest.fixture
def old_style(tmp_path, monkeypatch):
    install_plugin(tmp_path / "site", monkeypatch, "oldstyle", OLD_STYLE)
    get_registry.cache_clear()
    yield
    get_registry.cache_clear()
    sys.modules.pop("zoo_oldstyle", None)


def test_a_mixer_that_cannot_be_vmapped_trains_unpacked(old_style, write, tmp_path, capsys):
    text = EXP.replace('{ name = "attention", num_heads = 2 }', '{ name = "old_style" }').replace(
        "max_epochs = 2", "max_epochs = 1")
    path = write(text)
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--quiet", "--pack", "3"]) == 0
    err = capsys.readouterr().err
    assert "--pack: mixer old_style cannot be vmapped" in err and "these 3 runs train unpacked" in err
    assert len([line for line in err.splitlines() if line.startswith("--pack")]) == 1  # one line
    for run_id in IDS:
        s = summary(tmp_path / "runs" / "exp" / run_id)
        assert s["status"] == "done" and "pack" not in s


def test_dry_run_shows_the_packs(write, tmp_path, capsys):
    text = EXP.split("[sweep")[0] + textwrap.dedent('''
        [sweep]
        "model.d_model" = [16, 32]
        "train.learning_rate" = [1e-3, 3e-3, 1e-2]
        "train.gradient_accumulation_steps" = [1, 2]
        ''')
    path = write(text)
    assert main(["run", str(path), "--out", str(tmp_path), "--pack", "2", "--dry-run", "--json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)["runs"]
    packs: dict = {}
    for row in rows:
        packs.setdefault(row["pack"], []).append(row["run_id"])
    # per d_model, the three gradient_accumulation_steps = 1 runs: packs of 2 and 1 (solo)
    assert packs.pop(None) == ["d16-lr1e-3-gradient_accumulation_steps2", "d16-lr3e-3-gradient_accumulation_steps2",
                               "d16-lr0.01-gradient_accumulation_steps1", "d16-lr0.01-gradient_accumulation_steps2",
                               "d32-lr1e-3-gradient_accumulation_steps2", "d32-lr3e-3-gradient_accumulation_steps2",
                               "d32-lr0.01-gradient_accumulation_steps1", "d32-lr0.01-gradient_accumulation_steps2"]
    assert list(packs.values()) == [["d16-lr1e-3-gradient_accumulation_steps1", "d16-lr3e-3-gradient_accumulation_steps1"],
                                    ["d32-lr1e-3-gradient_accumulation_steps1", "d32-lr3e-3-gradient_accumulation_steps1"]]
    assert "--pack: 6 run(s) with train.gradient_accumulation_steps > 1 train unpacked" in captured.err

    assert main(["run", str(path), "--out", str(tmp_path), "--pack", "3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["run", "status", "pack", "varied"]
    assert "--pack 3: 2 pack(s) of 3/3 runs, 6 run(s) unpacked" in out
    assert main(["run", str(path), "--out", str(tmp_path), "--dry-run"]) == 0
    assert "pack" not in capsys.readouterr().out.splitlines()[0]


def test_plan_cuts_a_group_into_even_packs(write):
    path = write(EXP.split("[sweep")[0] + '[sweep]\n"train.seed" = [0, 1, 2, 3, 4]\n')
    jobs = [(p, e, None) for p, e in load_points(path)]
    packs, notes = pack.plan(jobs, 4)
    assert [[e.train.seed for _, e, _ in p] for p in packs] == [[0, 1, 2], [3, 4]]
    assert notes == []
    assert pack.plan(jobs, 4, why_not="a reason") == ([[j] for j in jobs], ["--pack: a reason: every run trains unpacked"])


def test_parallel_workers_train_a_pack_each(write, tmp_path):
    path = write(EXP.replace("max_epochs = 2", "max_epochs = 1"))
    out = tmp_path / "runs"
    assert main(["run", str(path), "--out", str(out), "--quiet", "--pack", "2", "--parallel", "2"]) == 0
    runs = [out / "exp" / run_id for run_id in IDS]
    assert [summary(r).get("pack", {}).get("runs") for r in runs] == [["lr1e-3", "lr3e-3"]] * 2 + [None]
    assert all(summary(r)["status"] == "done" for r in runs)
    # one worker log for the pack, in both of its run directories
    assert os.path.samefile(runs[0] / "worker.log", runs[1] / "worker.log")
    assert not os.path.samefile(runs[0] / "worker.log", runs[2] / "worker.log")


def test_bench_train_prints_figures(write, capsys):
    path = write(EXP)
    assert main(["bench", "train", str(path), "--pack", "2", "--steps", "3", "--json", "-q", "--threads", "1"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["pack"], r["steps"]) for r in rows] == [(1, 3), (2, 3)]
    assert all(r["steps_per_s"] > 0 for r in rows)
    assert rows[1]["model_steps_per_s"] == pytest.approx(2 * rows[1]["steps_per_s"], abs=0.02)
    assert rows[0]["vs_solo"] == 1.0


def test_bench_sweep_estimates_each_group_and_the_total(write, capsys):
    """Two widths × three packable points: two groups of three runs; with --pack 2 each
    group packs as 2 + 1."""
    path = write(EXP + '[sweep.width]\n"model.d_model" = [16, 32]\n')
    assert main(["bench", "sweep", str(path), "--pack", "2", "--steps", "2", "--json", "-q", "--threads", "1"]) == 0
    *groups, total = json.loads(capsys.readouterr().out)
    assert len(groups) == 2 and total["group"] == "total" and total["runs"] == 6
    for g in groups:
        assert (g["runs"], g["steps_per_epoch"], g["max_epochs"], g["pack"]) == (3, 25, 2, 2)
        steps_alone = 3 * 2 * 25 * g["solo_ms_per_step"] / 1000  # every run's steps, nothing else
        # (estimates are rounded to 0.01 s)
        assert steps_alone - 0.01 <= g["solo_estimate_s"] <= steps_alone + 3 * (g["start_s"] + 3 * g["eval_s"] + 2 * g["checkpoint_s"]) + 0.2
        pack_steps = 2 * 25 * g["pack_ms_per_step"] / 1000 + 2 * 25 * g["solo_ms_per_step"] / 1000  # a pack of 2, one solo
        assert pack_steps - 0.01 <= g["packed_estimate_s"]
    assert total["solo_estimate_s"] == pytest.approx(sum(g["solo_estimate_s"] for g in groups), abs=0.02)
    assert total["packed_estimate_s"] == pytest.approx(sum(g["packed_estimate_s"] for g in groups), abs=0.02)
    assert total["speedup"] == pytest.approx(total["solo_estimate_s"] / total["packed_estimate_s"], rel=0.02)
    assert main(["bench", "sweep"]) == 2
    assert main(["bench", "mixers", "attention", "--steps", "3"]) == 2


def test_a_mixer_with_an_auxiliary_loss_trains_unpacked(write):
    """The stacked step optimizes the cross-entropy alone, so a model whose mixer adds an
    auxiliary loss (sigmoid_lookups) is refused by the probe, naming the mixer."""
    path = write(EXP.split("[sweep")[0].replace('{ name = "attention", num_heads = 2 }', '{ name = "sigmoid_lookups" }'))
    problem, _ = pack.probe(load_experiment(path))
    assert problem is not None and "sigmoid_lookups adds an auxiliary loss" in problem
