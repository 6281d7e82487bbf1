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
