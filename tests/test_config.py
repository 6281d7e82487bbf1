"""Strict experiment loading: every error class names the file and the key path; round trip."""

import subprocess
import sys
from pathlib import Path

import pytest

from zoology.cli import main
from zoology.config import dump_experiment, load_experiment, load_experiments, parse_override
from zoology.errors import ConfigError


def run_cli(capsys, *args):
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def error_of(capsys, path):
    code, _, err = run_cli(capsys, "validate", str(path))
    assert code == 2
    assert "Traceback" not in err
    assert str(path) in err
    return err


def test_valid_experiment_loads_with_defaults(write, base_toml):
    exp = load_experiment(write(base_toml))
    assert exp.name == "exp"
    assert exp.model.vocab_size == 64  # defaulted from the data
    assert exp.model.state_mixer[0].name == "mlp"
    assert exp.model.sequence_mixer[0].params["num_heads"] == 2
    assert exp.train.learning_rate == 1e-3 and exp.train.weight_decay == 0.1


def test_round_trip(write, base_toml, tmp_path):
    exp = load_experiment(write(base_toml))
    again = load_experiment(write(dump_experiment(exp), "resolved.toml"))
    assert again == exp


def test_syntax_error_reports_line_and_column(write, capsys):
    err = error_of(capsys, write("[data]\nbatch_size = = 3\n"))
    assert "line 2" in err and "column" in err


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("[train]", "[train]\nlearning_rat = 0.1"), "train.learning_rat: unknown key; did you mean 'learning_rate'?"),
        (("[model]", "colour = 3\n[model]"), "colour: unknown key"),
        (("num_kv_pairs = 2\n[[data.test]]", "num_kv_pairs = 2\nbogus = 1\n[[data.test]]"), "data.train[0].bogus: unknown key"),
        (("d_model = 16", "d_model = 16.0"), "model.d_model: must be an integer, got float 16.0"),
        (("d_model = 16", "d_model = true"), "model.d_model: must be an integer, got bool True"),
        (("d_model = 16", 'd_model = "16"'), "model.d_model: must be an integer, got str"),
        (("max_epochs = 1", "max_epochs = 0"), "train.max_epochs: must be >= 1, got 0"),
        (('num_heads = 2', 'num_heads = 0'), "model.sequence_mixer.num_heads: must be >= 1, got 0"),
        (('num_heads = 2', 'num_heads = 2, d_model = 8'), "model.sequence_mixer[0].d_model: is filled in by the model"),
        (('name = "attention"', 'name = "atention"'), "did you mean 'attention'?"),
        (('task = "mqar"\nnum_examples = 32', 'task = "mqr"\nnum_examples = 32'), "data.train[0].task: unknown task 'mqr'; did you mean 'mqar'?"),
        (("num_kv_pairs = 2\n[[data.test]]", "num_kv_pairs = 9\n[[data.test]]"), "data.train[0].num_kv_pairs: num_kv_pairs * 2 * num_passes + num_kv_pairs * 2 must be <= input_seq_len (got 36 > 16)"),
        (("[train]", '[train]\nmixed_precision = "fp8"'), "train.mixed_precision: must be one of 'no', 'bf16', 'fp16', got 'fp8'"),
        (("d_model = 16", "d_model = 16\nvocab_size = 10"), "model.vocab_size: must be >= 64"),
        (("[train]", '[train]\nselect_metric = "test/accuracy"'), "train.select_metric: must be a validation metric"),
        (("[train]", '[train]\nearly_stopping = { metric = "valid/num_kv_pairs=8/accuracy" }'),
         "train.early_stopping.metric: 'valid/num_kv_pairs=8/accuracy' is not reported by the validation "
         "segments; they report valid/accuracy, valid/loss, valid/input_seq_len=16/accuracy"),
    ],
)
def test_config_errors(write, base_toml, capsys, edit, expected):
    old, new = edit
    assert old in base_toml
    err = error_of(capsys, write(base_toml.replace(old, new, 1)))
    assert expected in err


def test_missing_field(write, base_toml, capsys):
    err = error_of(capsys, write(base_toml.replace("vocab_size = 64\ninput_seq_len = 16\nnum_kv_pairs = 2\n[[data.test]]",
                                                   "input_seq_len = 16\nnum_kv_pairs = 2\n[[data.test]]")))
    assert "data.train[0].vocab_size: missing required key" in err
    err = error_of(capsys, write("[model]\nsequence_mixer = { name = 'attention' }\n"))
    assert "data: missing required key" in err


def test_all_errors_reported_together(write, base_toml):
    text = base_toml.replace("d_model = 16", "d_model = 1.5").replace("max_epochs = 1", "max_epochs = 1\nfoo = 2")
    with pytest.raises(ConfigError) as info:
        load_experiment(write(text))
    paths = [p for p, _ in info.value.problems]
    assert "model.d_model" in paths and "train.foo" in paths


def test_missing_file_is_a_user_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", str(tmp_path / "nope.toml"))
    assert code == 2 and "cannot read" in err and "Traceback" not in err


def test_set_overrides(write, base_toml):
    path = write(base_toml)
    exp = load_experiment(path, ["model.d_model=32", "train.learning_rate=3e-4", "data.train.0.num_kv_pairs=3",
                                 'model.sequence_mixer.name="attention"'])
    assert exp.model.d_model == 32 and exp.train.learning_rate == 3e-4
    assert exp.data.train[0].num_kv_pairs == 3
    assert parse_override("a.b=hello") == ("a.b", "hello")
    with pytest.raises(ConfigError) as info:
        load_experiment(path, ["model.d_model=1.5"])
    assert info.value.problems[0][0] == "model.d_model"


def test_mixer_arrays_cycle_and_sweep(write, base_toml):
    text = base_toml.replace('sequence_mixer = { name = "attention", num_heads = 2 }',
                             'sequence_mixer = [{ name = "attention", num_heads = 2 }, { name = "attention" }]')
    text += '\n[sweep]\n"model.d_model" = [16, 32]\n"train.learning_rate" = [1e-3, 1e-2]\n'
    exps = load_experiments(write(text))
    assert len(exps) == 4
    assert len({e.run_id for e in exps}) == 4
    assert [m.params["num_heads"] for m in exps[0].model.sequence_mixer] == [2, 1]


def test_no_traceback_from_python_m(write):
    path = write("[data]\nbatch_size = 'x'\n")
    proc = subprocess.run([sys.executable, "-m", "zoology", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "data.batch_size" in proc.stderr


EXAMPLE_FILES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_bundled_example_loads_and_validates(path):
    assert load_experiments(path)  # every sweep point, strictly validated
