"""Trackers through Accelerate: what an offline W&B run and a TensorBoard run leave in the
run directory, a resumed run continuing the same W&B run, and the [logging] table's rules."""

import json
import os
import subprocess
import sys

import pytest
import tomli

from zoology.cli import main
from zoology.config import dump_experiment, load_experiment, structure_experiment
from zoology.errors import ConfigError
from zoology.tracking import TRACKING
from zoology.train import Trainer


def run_dir(tmp_path, name="exp"):
    return tmp_path / name / "default"


def offline_runs(run):
    return sorted((run / "wandb").glob("offline-run-*"))


def test_offline_wandb_run_writes_its_run_folder(write, base_toml, tmp_path):
    # conftest disables wandb; this run wants it offline. A process of its own, as a user runs
    # it: wandb's service completes the run's record file when the process ends.
    text = base_toml.replace("max_epochs = 1", "max_epochs = 2") + '\n[logging.wandb]\nproject = "zoo"\ntags = ["t1"]\n'
    env = {**os.environ, "WANDB_MODE": "offline"}
    done = subprocess.run([sys.executable, "-m", "zoology", "run", str(write(text)), "--out", str(tmp_path), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run = run_dir(tmp_path)
    wandb_id = json.loads((run / TRACKING).read_text())["wandb_id"]
    (folder,) = offline_runs(run)
    assert folder.name.endswith(f"-{wandb_id}")
    log = (folder / f"run-{wandb_id}.wandb").read_bytes()  # the records `wandb sync` uploads
    for word in (b"valid/accuracy", b"train/loss", b"test/accuracy", b"state_size", b"num_parameters",
                 b"num_kv_pairs", b"zoo", b"t1"):
        assert word in log, word


def test_resumed_run_continues_the_same_wandb_run(write, base_toml, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    text = base_toml.replace("max_epochs = 1", "max_epochs = 2") + '\n[logging.wandb]\nproject = "zoo"\n'
    path = write(text)
    run_epoch = Trainer.run_epoch

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return run_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", interrupted)
    assert main(["run", str(path), "--out", str(tmp_path), "--quiet"]) == 130  # after epoch 1's checkpoint
    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
    run = run_dir(tmp_path)
    first = json.loads((run / TRACKING).read_text())["wandb_id"]
    assert main(["run", str(path), "--out", str(tmp_path), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "done" and summary["resumed_from_epoch"] == 1
    assert json.loads((run / TRACKING).read_text())["wandb_id"] == first
    folders = offline_runs(run)  # offline-run-<time>-<id>: one per attempt, both with the same id
    assert len(folders) == 2 and all(f.name.endswith(f"-{first}") for f in folders)

    assert main(["run", str(path), "--out", str(tmp_path), "--quiet", "--rerun"]) == 0  # from scratch: a new W&B run
    fresh = json.loads((run / TRACKING).read_text())["wandb_id"]
    assert fresh != first and offline_runs(run)[-1].name.endswith(fresh)


def test_tensorboard_run_writes_event_files_with_the_metric_tags(write, base_toml, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    text = base_toml.replace("max_epochs = 1", "max_epochs = 2") + '\n[logging]\ntrackers = ["tensorboard"]\n'
    assert main(["run", str(write(text)), "--out", str(tmp_path), "--quiet"]) == 0
    run = run_dir(tmp_path)
    assert not (run / "wandb").exists()
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "valid/accuracy", "valid/loss", "lr", "test/accuracy", "state_size"} <= tags
    assert "valid/num_kv_pairs=2/accuracy" in tags
    steps = [e.step for e in events.Scalars("valid/accuracy")]
    assert steps == [4, 8]  # 32 examples / batch 8 = 4 optimizer steps per epoch
    logged = [json.loads(line)["valid/accuracy"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("valid/accuracy")] == pytest.approx(logged)
    hparams = list((run / "tensorboard").glob("*/hparams.yml"))  # the resolved experiment, flattened
    assert len(hparams) == 1 and "model.d_model: 16" in hparams[0].read_text()


def test_a_wandb_table_alone_implies_the_wandb_tracker(base_toml):
    def logging(extra):
        return structure_experiment(tomli.loads(base_toml + extra), "exp.toml").logging

    assert logging("").trackers == []
    assert logging('[logging.wandb]\nproject = "p"\n').trackers == ["wandb"]
    both = logging('[logging]\ntrackers = ["wandb", "tensorboard"]\n[logging.tensorboard]\nflush_secs = 5\n')
    assert both.trackers == ["wandb", "tensorboard"] and both.options == {"tensorboard": {"flush_secs": 5}}
    assert both.wandb is None  # wandb with its defaults (project "zoology")


@pytest.mark.parametrize("extra, where, says", [
    ('[logging]\ntrackers = ["tensorbord"]\n', "logging.trackers", "unknown tracker 'tensorbord'"),
    ('[logging]\ntrackers = "wandb"\n', "logging.trackers", "must be an array"),
    ('[logging]\ntrackers = ["tensorboard"]\n[logging.wandb]\nproject = "p"\n', "logging.wandb", "leaves 'wandb' out"),
    ('[logging.wandbb]\nproject = "p"\n', "logging.wandbb", "did you mean 'wandb'"),
    ('[logging]\ntensorboard = 3\n', "logging.tensorboard", "must be a table"),
    ('[logging.wandb]\nprojet = "p"\n', "logging.wandb.projet", "did you mean 'project'"),
])
def test_logging_mistakes_name_the_key(base_toml, extra, where, says):
    with pytest.raises(ConfigError) as err:
        structure_experiment(tomli.loads(base_toml + extra), "exp.toml")
    assert any(path == where and says in msg for path, msg in err.value.problems), err.value.problems


def test_resolved_config_round_trips_the_trackers(write, base_toml):
    text = base_toml + '\n[logging]\ntrackers = ["tensorboard"]\n'
    exp = load_experiment(write(text))
    again = load_experiment(write(dump_experiment(exp), "resolved.toml"))
    assert again == exp and again.logging.trackers == ["tensorboard"]


def test_a_tracker_that_is_not_installed_is_a_user_error(write, base_toml, tmp_path, monkeypatch, capsys):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    text = base_toml + '\n[logging]\ntrackers = ["tensorboard"]\n'
    assert main(["run", str(write(text)), "--out", str(tmp_path), "--quiet"]) == 2
    assert "pip install 'zoology[tensorboard]'" in capsys.readouterr().err
