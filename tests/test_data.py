"""Data: the segment cache, `zoology data export`, and data.cache_dir in the config."""

from __future__ import annotations

import warnings
from pathlib import Path

import attrs
import pytest
import tomli
import torch
from safetensors.torch import load_file

from zoology.cache import cache_path, cached_generate, resolve_cache_dir
from zoology.cli import main
from zoology.config import dump_experiment, load_experiment
from zoology.data import build_split, build_splits
from zoology.tasks.mqar import MQAR


def _task(**kw):
    return MQAR(**{"vocab_size": 64, "input_seq_len": 32, "num_kv_pairs": 4, "num_examples": 50, **kw})


@pytest.fixture
def counting(monkeypatch):
    """Count MQAR.generate calls."""
    calls = []
    real = MQAR.generate

    def generate(self, seed):
        calls.append(seed)
        return real(self, seed)

    monkeypatch.setattr(MQAR, "generate", generate)
    return calls


def test_cache_hit_returns_identical_tensors_without_generating(tmp_path, counting):
    task = _task()
    first = cached_generate(task, 5, tmp_path)
    assert counting == [5] and cache_path(tmp_path, task, 5).exists()
    again = cached_generate(task, 5, tmp_path)
    assert counting == [5]  # served from disk
    assert torch.equal(first.inputs, again.inputs) and torch.equal(first.labels, again.labels)
    assert again.inputs.dtype == first.inputs.dtype == torch.int16
    fresh = task.generate(5)
    assert torch.equal(fresh.inputs, again.inputs) and torch.equal(fresh.labels, again.labels)


def test_cache_key_covers_params_seed_and_version(tmp_path, monkeypatch):
    task = _task()
    base = cache_path(tmp_path, task, 1)
    assert cache_path(tmp_path, task, 1) == base
    assert cache_path(tmp_path, task, 2) != base
    assert cache_path(tmp_path, _task(num_kv_pairs=3), 1) != base
    assert cache_path(tmp_path, _task(power_a=0.5), 1) != base
    assert cache_path(tmp_path, _task(num_examples=51), 1) != base
    monkeypatch.setattr(MQAR, "version", MQAR.version + 1)
    assert cache_path(tmp_path, task, 1) != base
    monkeypatch.undo()
    monkeypatch.setattr("zoology.cache.FORMAT", 99)
    assert cache_path(tmp_path, task, 1) != base
    monkeypatch.undo()
    assert cache_path(tmp_path, task, 1) == base
    # and as files: every different key gets its own
    for t, s in ((task, 1), (task, 2), (_task(num_kv_pairs=3), 1)):
        cached_generate(t, s, tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def test_truncated_file_is_reported_in_one_line_and_regenerated(tmp_path, counting):
    task = _task()
    good = cached_generate(task, 3, tmp_path)
    path = cache_path(tmp_path, task, 3)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning) as record:
        again = cached_generate(task, 3, tmp_path)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and "\n" not in messages[0] and str(path) in messages[0]
    assert "regenerating" in messages[0]
    assert counting == [3, 3]
    assert torch.equal(again.inputs, good.inputs)
    assert len(path.read_bytes()) == len(data)  # rewritten whole
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached_generate(task, 3, tmp_path)  # now a clean hit
    assert counting == [3, 3]


def test_file_for_other_params_is_rejected(tmp_path, counting):
    task, other = _task(), _task(num_kv_pairs=3)
    cached_generate(other, 3, tmp_path)
    cache_path(tmp_path, other, 3).replace(cache_path(tmp_path, task, 3))  # a file under the wrong name
    with pytest.warns(RuntimeWarning, match="metadata params"):
        seg = cached_generate(task, 3, tmp_path)
    assert torch.equal(seg.inputs, task.generate(3).inputs)


def test_cache_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    build_split([_task()], "train", 0, cache_dir=resolve_cache_dir(False))
    assert list(tmp_path.rglob("*")) == []


def test_no_temp_files_left(tmp_path):
    cached_generate(_task(), 0, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [cache_path(tmp_path, _task(), 0).name]


def test_resolve_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert resolve_cache_dir(True) == tmp_path / "xdg" / "zoology"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir(True) == tmp_path / "home" / ".cache" / "zoology"
    assert resolve_cache_dir("~/c") == tmp_path / "home" / "c"
    assert resolve_cache_dir("rel/dir") == Path("rel/dir")
    assert resolve_cache_dir(False) is None


# -- config --------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["true", "false", '"some/folder"'])
def test_cache_dir_config_round_trips(write, base_toml, value):
    exp = load_experiment(write(base_toml.replace("[data]", f"[data]\ncache_dir = {value}")))
    assert exp.data.cache_dir == tomli.loads(f"v = {value}")["v"]
    again = load_experiment(write(dump_experiment(exp), "resolved.toml"))
    assert again == exp


def test_cache_dir_config_rejects_other_types(write, base_toml, capsys):
    path = write(base_toml.replace("[data]", "[data]\ncache_dir = 1"))
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "data.cache_dir: must be true, false or a string (a folder), got int 1" in err


def test_training_splits_use_the_cache(write, base_toml, tmp_path, counting):
    cache = tmp_path / "cache"
    exp = load_experiment(write(base_toml.replace("[data]", f'[data]\ncache_dir = "{cache}"')))
    a = build_splits(exp)
    n = len(counting)
    b = build_splits(exp)
    assert len(counting) == n == 3 and len(list(cache.glob("*.safetensors"))) == 3
    for name in a:
        assert torch.equal(a[name].inputs, b[name].inputs) and a[name].seeds == b[name].seeds


# -- export --------------------------------------------------------------------------------

def test_export_writes_the_training_tensors(write, base_toml, tmp_path, capsys):
    text = base_toml.replace("num_kv_pairs = 2\n[[data.test]]",
                             "num_kv_pairs = 2\n[[data.train]]\ntask = \"mqar\"\nnum_examples = 8\n"
                             "vocab_size = 64\ninput_seq_len = 24\nnum_kv_pairs = 3\n[[data.test]]")
    path = write(text)
    out = tmp_path / "export"
    assert main(["data", "export", str(path), "--out", str(out)]) == 0
    exp = load_experiment(path)
    splits = build_splits(exp)
    info = tomli.loads((out / "data.toml").read_text())
    assert info["data"]["seed"] == exp.data.seed and len(info["data"]["train"]) == 2
    assert info["zoology_version"]
    for name, split in splits.items():
        tensors = load_file(out / f"{name}.safetensors")
        for key, want in (("inputs", split.inputs), ("labels", split.labels), ("segment", split.segment)):
            assert torch.equal(tensors[key], want), (name, key)
        desc = info["splits"][name]
        assert desc["num_examples"] == len(split) and desc["file"] == f"{name}.safetensors"
        assert [s["seed"] for s in desc["segments"]] == split.seeds
        assert [s["slices"] for s in desc["segments"]] == split.slices
    assert info["splits"]["train"]["segments"][1]["params"]["num_kv_pairs"] == 3
    assert info["splits"]["train"]["seq_len"] == 24
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_export_bad_input_is_a_user_error(write, base_toml, tmp_path, capsys):
    code = main(["data", "export", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "missing.toml" in err
    afile = tmp_path / "afile"
    afile.write_text("")
    code = main(["data", "export", str(write(base_toml)), "--out", str(afile)])
    err = capsys.readouterr().err
    assert code == 2 and "not a folder" in err


def test_segments_of_different_token_dtypes_share_a_split():
    """Built-in tasks store int16 tokens; a plugin's int64 segment still joins the same split
    (widened), padded on the right, and the values survive."""
    from zoology.tasks.base import Segment, token_dtype

    assert token_dtype(8192) == torch.int16 and token_dtype(40_000) == torch.int32
    small = MQAR(vocab_size=32, input_seq_len=16, num_kv_pairs=2, num_examples=3)
    assert small.generate(0).inputs.dtype == torch.int16

    class Wide(MQAR):
        def generate(self, seed):
            s = super().generate(seed)
            return Segment(s.inputs.long(), s.labels.long())

    wide = Wide(vocab_size=32, input_seq_len=24, num_kv_pairs=2, num_examples=2)
    split = build_split([small, wide], "train", 0)
    assert split.inputs.dtype == split.labels.dtype == torch.int64
    assert split.inputs.shape == (5, 24)
    assert torch.equal(split.inputs[:3, :16], small.generate(split.seeds[0]).inputs.long())
    assert (split.labels[:3, 16:] == -100).all()
    with pytest.raises(ValueError, match="int16, int32 or int64"):
        Segment(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))


def test_the_framework_names_slices_from_task_slices(tmp_path):
    """A task's generate() returns tensors only; per-slice names come from task.slices(),
    for fresh and cached segments alike."""
    task = MQAR(vocab_size=32, input_seq_len=16, num_kv_pairs=2, num_examples=4)
    for cache in (None, tmp_path, tmp_path):  # no cache, cache miss, cache hit
        split = build_split([task, attrs.evolve(task, num_kv_pairs=3)], "valid", 0, cache)
        assert split.slices == [{"input_seq_len": 16, "num_kv_pairs": 2}, {"input_seq_len": 16, "num_kv_pairs": 3}]
