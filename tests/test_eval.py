"""`zoology eval` scores a finished run's saved model; `model.init_from` starts a run from one."""

import json
from pathlib import Path

import pytest
import torch

from zoology import saved, tensorfile
from zoology.cli import main
from zoology.config import load_experiment
from zoology.errors import UserError
from zoology.model import LanguageModel
from zoology.runs import RunDir
from zoology.tasks.mqar import MQAR
from zoology.train import Trainer

from .conftest import BASE

TRAIN = BASE.replace("max_epochs = 1", "max_epochs = 2\nlearning_rate = 1e-2")
POSITIONS = TRAIN.replace("n_layers = 2", "n_layers = 2\nmax_position_embeddings = 16")
LONG_CONV = TRAIN.replace('sequence_mixer = { name = "attention", num_heads = 2 }',
                          'sequence_mixer = { name = "base_conv", kernel_size = -1, implicit_long_conv = false }')


def train(root: Path, name: str, text: str) -> Path:
    path = root / f"{name}.toml"
    path.write_text(text)
    assert main(["run", str(path), "--out", str(root / "runs"), "--quiet"]) == 0
    return root / "runs" / name / "default"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Really trained tiny runs: attention without learned positions, with 16 of them, and
    a model whose explicit long convolution spans the training length."""
    root = tmp_path_factory.mktemp("eval")
    return {"plain": train(root, "plain", TRAIN), "positions": train(root, "positions", POSITIONS),
            "long_conv": train(root, "long_conv", LONG_CONV)}


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def tensors(run: Path) -> dict[str, torch.Tensor]:
    return tensorfile.load(run / "model.safetensors")[0]


def test_own_test_segments_reproduce_the_summary(runs, capsys, monkeypatch):
    made = []
    original = MQAR.generate
    monkeypatch.setattr(MQAR, "generate", lambda self, seed: made.append(self.num_examples) or original(self, seed))
    run = runs["plain"]
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "test/num_kv_pairs=2/accuracy" in out and "eval/test.json" in out
    record = json.loads((run / "eval" / "test.json").read_text())
    assert record["metrics"] == summary(run)["test"]  # accuracy and loss, exactly
    assert record["model_epoch"] == summary(run)["best_epoch"]
    assert made == [16]  # the test segment only: the 32 training examples were never generated


def test_longer_length_and_new_segments_are_written(runs, write, capsys):
    run = runs["plain"]
    assert main(["eval", str(run), "--set", "data.test.0.input_seq_len=32", "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("test.0.input_seq_len=32: test/accuracy")
    record = json.loads((run / "eval" / "test.0.input_seq_len=32.json").read_text())
    assert record["data"]["seq_len"] == 32 and "test/input_seq_len=32/accuracy" in record["metrics"]
    assert record["from"]["set"] == ["data.test.0.input_seq_len=32"]

    segments = write("""
[[data.test]]
task = "mqar"
num_examples = 8
vocab_size = 32
input_seq_len = 16
num_kv_pairs = 2
[[data.test]]
task = "mqar"
num_examples = 8
vocab_size = 64
input_seq_len = 48
num_kv_pairs = 6
""", "longer.toml")
    assert main(["eval", str(run), "--data", str(segments), "--quiet"]) == 0
    metrics = json.loads((run / "eval" / "longer.json").read_text())["metrics"]
    assert {"test/num_kv_pairs=2/accuracy", "test/num_kv_pairs=6/accuracy", "test/input_seq_len=48/loss"} <= set(metrics)
    assert main(["eval", str(run), "--data", str(segments), "--name", "mine", "--quiet"]) == 0
    assert json.loads((run / "eval" / "mine.json").read_text())["metrics"] == metrics


def test_length_past_learned_positions_names_length_and_limit(runs, capsys):
    assert main(["eval", str(runs["positions"]), "--set", "data.test.0.input_seq_len=32"]) == 2
    err = capsys.readouterr().err
    assert "data.test[0].input_seq_len: length 32 is past the model's learned positions: it has 16" in err
    assert "model.max_position_embeddings" in err and "Traceback" not in err
    assert main(["eval", str(runs["positions"]), "--set", "data.test.0.input_seq_len=12", "-q"]) == 0  # shorter is fine


def test_mixer_that_cannot_run_longer_is_a_clear_error(runs, capsys):
    assert main(["eval", str(runs["long_conv"]), "--set", "data.test.0.input_seq_len=32"]) == 2
    err = capsys.readouterr().err
    assert "cannot run at length 32 (it trained and tested up to length 16)" in err and "max_seq_len=16" in err


def test_vocab_larger_than_the_model_is_refused(runs, capsys):
    assert main(["eval", str(runs["plain"]), "--set", "data.test.0.vocab_size=128"]) == 2
    err = capsys.readouterr().err
    assert "config.toml with --set: data.test[0].vocab_size: 128 tokens, but the model embeds 64" in err


def test_bad_inputs_are_clear_errors(runs, tmp_path, write, capsys):
    def error(*args: str) -> str:
        assert main(["eval", *args]) == 2
        return capsys.readouterr().err

    assert "no such run directory" in error(str(tmp_path / "nowhere"))
    assert "not a run directory (no readable summary.json); it holds the runs default" in \
        error(str(runs["plain"].parent))
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "summary.json").write_text('{"status": "running"}')
    assert "the run is not finished (status 'running')" in error(str(unfinished))
    diverged = tmp_path / "diverged"
    diverged.mkdir()
    (diverged / "summary.json").write_text('{"status": "diverged"}')
    assert "the run ended 'diverged' without a model" in error(str(diverged))
    assert "--set model.d_model: zoology eval changes only what is evaluated" in \
        error(str(runs["plain"]), "--set", "model.d_model=32")
    assert "--name '../x'" in error(str(runs["plain"]), "--name", "../x")
    data = write('[data]\nbatch_size = 4\n[[data.test]]\ntask = "mqar"\n', "bad.toml")
    assert "bad.toml: data.batch_size: not read by zoology eval" in error(str(runs["plain"]), "--data", str(data))
    data = write('[[data.test]]\ntask = "mqar"\n', "bad.toml")
    assert "bad.toml: data.test[0].vocab_size: missing required key" in \
        error(str(runs["plain"]), "--data", str(data))


def test_init_from_starts_from_the_saved_weights(runs, tmp_path):
    source = runs["plain"]
    # learning rate 0: the run's only epoch leaves the loaded weights as they are
    text = TRAIN.replace("learning_rate = 1e-2", "learning_rate = 0.0").replace(
        "[model]", f"[model]\ninit_from = {json.dumps(str(source))}")
    run = train(tmp_path, "started", text)
    got, want = tensors(run), tensors(source)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert summary(run)["test"] == summary(source)["test"]
    assert summary(run)["init_from"] == {"run": str(source.resolve()), "experiment": "plain", "run_id": "default",
                                         "epoch": summary(source)["best_epoch"]}
    assert load_experiment(run / "config.toml").model.init_from == str(source.resolve())


def test_resume_wins_over_init_from(runs, tmp_path):
    text = TRAIN.replace("max_epochs = 2", "max_epochs = 1").replace(
        "[model]", f"[model]\ninit_from = {json.dumps(str(runs['plain']))}")
    run = train(tmp_path, "resumed", text)  # trained on: its checkpoint differs from the source
    exp = load_experiment(run / "config.toml")
    trainer = Trainer(exp, RunDir(tmp_path / "runs", "resumed", "default"), quiet=True)
    trainer.restore()
    state = trainer.model.state_dict()
    ckpt = tensorfile.load(run / "checkpoint" / "model.safetensors")[0]
    assert all(torch.equal(state[k], ckpt[k]) for k in ckpt)
    assert not torch.equal(state["token_embedding.weight"], tensors(runs["plain"])["token_embedding.weight"])
    assert trainer.summary["init_from"]["run"] == str(runs["plain"].resolve())  # kept from the checkpoint


def test_init_from_must_fit_and_be_a_finished_run(runs, write, tmp_path, capsys):
    bigger = TRAIN.replace("n_layers = 2", "n_layers = 3\nstate_mixer = { name = \"mlp\", hidden_mult = 2 }").replace(
        "[model]", f"[model]\ninit_from = {json.dumps(str(runs['plain']))}")
    assert main(["run", str(write(bigger)), "--out", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "exp.toml: model.init_from:" in err and "does not fit this model" in err
    assert "blocks.0.state_mixer.fc1.weight: saved [64, 16], this model [32, 16]" in err
    assert "blocks.2.norm1.bias [16]: not in the saved model" in err
    assert not (tmp_path / "runs" / "exp").exists()  # refused at load, before anything was written

    nowhere = TRAIN.replace("[model]", f"[model]\ninit_from = {json.dumps(str(tmp_path))}")
    assert main(["validate", str(write(nowhere, "nowhere.toml"))]) == 2
    assert f"nowhere.toml: model.init_from: {tmp_path}: not a run directory" in capsys.readouterr().err

    # the trainer checks again on the verified file (it may have changed since loading)
    exp = load_experiment(write(bigger.replace("init_from", "# init_from"), "other.toml"))
    with pytest.raises(UserError, match=r"blocks.1.state_mixer.fc2.weight: saved \[16, 64\], this model \[16, 32\]"):
        saved.load_into(LanguageModel(exp), runs["plain"] / "model.safetensors")
