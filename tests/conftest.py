import os

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def write(tmp_path):
    """Write a TOML file into the test's temp dir and return its path."""

    def _write(text: str, name: str = "exp.toml"):
        path = tmp_path / name
        path.write_text(text)
        return path

    return _write


BASE = """
[data]
batch_size = 8
[[data.train]]
task = "mqar"
num_examples = 32
vocab_size = 64
input_seq_len = 16
num_kv_pairs = 2
[[data.test]]
task = "mqar"
num_examples = 16
vocab_size = 64
input_seq_len = 16
num_kv_pairs = 2
[model]
d_model = 16
n_layers = 2
sequence_mixer = { name = "attention", num_heads = 2 }
[train]
max_epochs = 1
"""


@pytest.fixture
def base_toml():
    return BASE


def install_plugin(site, monkeypatch, name: str, source: str) -> None:
    """Fake `pip install` of a one-module plugin: ``zoo_<name>.py`` plus a dist-info with a
    ``zoology`` entry point, in ``site`` (put first on sys.path and PYTHONPATH, so worker
    subprocesses find it too). The caller clears the registry cache around it."""
    import importlib

    site.mkdir(exist_ok=True)
    (site / f"zoo_{name}.py").write_text(source)
    dist = site / f"zoo_{name}-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: zoo-{name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[zoology]\n{name} = zoo_{name}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    importlib.invalidate_caches()
