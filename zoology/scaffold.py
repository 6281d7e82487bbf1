"""``zoology new plugin NAME``: write a plugin package that installs, registers and passes
its own tests as generated, to be edited from there (as ``llm`` and ``datasette`` authors
start from their templates).

The package: ``pyproject.toml`` with the ``zoology`` entry point, ``src/zoology_NAME/``
with the plugin module (the hooks) and a task and/or a mixer skeleton, ``tests/`` calling
``zoology.testing.check_task`` / ``check_mixer``, an example experiment and a README. The
skeletons are small but real: the task is a delayed copy (predict the token ``lag``
positions back), the mixer a gated causal short convolution with its recurrent form, so
the example learns within a few epochs on a CPU.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from string import Template

from zoology import __version__
from zoology.errors import UserError

NAME = re.compile(r"[a-z][a-z0-9_-]*[a-z0-9]|[a-z]")

PYPROJECT = Template('''\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "zoology-$name"
version = "0.1.0"
description = "A Zoology plugin: $what"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["zoology>=$zoology_version", "torch>=2.1", "attrs>=23.1"]

[project.optional-dependencies]
test = ["pytest>=7"]

# The plugin declaration: Zoology imports `$package.plugin` and calls the hooks it
# implements. The entry-point name ("$ident") is the plugin's name in `zoology plugins`.
[project.entry-points.zoology]
$ident = "$package.plugin"

[tool.setuptools.packages.find]
where = ["src"]

[tool.pytest.ini_options]
testpaths = ["tests"]
''')

INIT = Template('''\
"""$title: $what."""

$imports

__all__ = [$all]
''')

PLUGIN = Template('''\
"""The module the `zoology` entry point names: one function per hook."""

from __future__ import annotations

from collections.abc import Callable

import zoology

$imports
$hooks''')

TASK_HOOK = Template('''

@zoology.hookimpl
def zoology_register_tasks(register: Callable[..., None]) -> None:
    register($task_class)  # as "$task_name" (its `name`)
''')

MIXER_HOOK = Template('''

@zoology.hookimpl
def zoology_register_mixers(register: Callable[..., None]) -> None:
    register($mixer_class)  # as "$mixer_name"
''')

TASK = Template('''\
"""Delayed copy: at every position from `lag` on, predict the token `lag` positions back."""

from __future__ import annotations

from typing import ClassVar

import attrs
import torch
from zoology import IGNORE_INDEX, FieldError, Segment, Task, at_least, generator, param, token_dtype


@attrs.frozen(kw_only=True)
class $task_class(Task):
    """Delayed copy: the label at position t is the input token at position t - lag.

    Tokens are uniform in [0, vocab_size); positions before `lag` are not scored. A model
    has to hold the last `lag` tokens in its state. Chance is 1 / vocab_size.
    """

    name = "$task_name"
    example: ClassVar[dict[str, int]] = {"vocab_size": 16, "input_seq_len": 12, "lag": 2}  # `zoology show task`

    lag: int = param(2, "how many positions back the label is", at_least(1))

    def __attrs_post_init__(self) -> None:  # constraints between fields
        if self.lag >= self.input_seq_len:
            raise FieldError("lag", f"must be < input_seq_len = {self.input_seq_len}, got {self.lag}")

    def slices(self) -> dict[str, int]:
        return {"lag": self.lag}  # per-slice metrics: valid/lag=2/accuracy

    def generate(self, seed: int) -> Segment:
        gen = generator(seed)  # every random number from this generator: same seed, same data
        n, length, lag = self.num_examples, self.input_seq_len, self.lag
        inputs = torch.randint(0, self.vocab_size, (n, length), generator=gen).to(token_dtype(self.vocab_size))
        labels = torch.full_like(inputs, IGNORE_INDEX)  # [n, length]: -100 where nothing is scored
        labels[:, lag:] = inputs[:, : length - lag]
        return Segment(inputs, labels)
''')

MIXER = Template('''\
"""A gated causal short convolution: a sequence mixer with a fixed, small state."""

from __future__ import annotations

import torch
from torch import nn
from zoology import FieldError


class $mixer_class(nn.Module):
    """Gated causal short convolution: every channel mixes its last `kernel_size` inputs,
    gated by a sigmoid of the current input.

    Args:
        kernel_size: positions (this one and earlier) each output sees
    """

    name = "$mixer_name"

    def __init__(self, d_model: int, kernel_size: int = 4) -> None:
        super().__init__()
        if kernel_size < 1:
            raise FieldError("kernel_size", f"must be >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        self.in_proj = nn.Linear(d_model, 2 * d_model)  # values and gates
        self.conv = nn.Conv1d(d_model, d_model, kernel_size, groups=d_model, padding=kernel_size - 1)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v, g = self.in_proj(x).chunk(2, dim=-1)  # [B, L, D] each
        y = self.conv(v.transpose(1, 2))[..., : x.shape[1]]  # [B, D, L]: y_t sees v_(t-k+1) .. v_t
        return self.out_proj(y.transpose(1, 2) * torch.sigmoid(g))  # [B, L, D]

    def recurrent(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """forward, one position at a time, carrying only the last kernel_size - 1 values."""
        v, g = self.in_proj(x).chunk(2, dim=-1)
        state = v.new_zeros(x.shape[0], x.shape[2], self.kernel_size - 1)  # [B, D, k-1], oldest first
        weight = self.conv.weight[:, 0]  # [D, k]
        ys = []
        for t in range(x.shape[1]):
            window = torch.cat([state, v[:, t, :, None]], dim=2)  # [B, D, k]
            ys.append((window * weight).sum(-1) + self.conv.bias)  # [B, D]
            state = window[:, :, 1:]
        y = torch.stack(ys, dim=1)  # [B, L, D]
        return self.out_proj(y * torch.sigmoid(g)), state

    def state_size(self, seq_len: int) -> int:
        """The last kernel_size - 1 inputs of every channel: d_model·(kernel_size - 1), at any length."""
        return self.conv.in_channels * (self.kernel_size - 1)
''')

TESTS = Template('''\
"""The plugin's own tests: Zoology's conformance kit, then what makes each component itself."""

$imports
$tests

def test_registered_through_the_entry_point():
    reg = load_registry()
$registered''')

TASK_TESTS = Template('''

def test_task_conformance():
    check_task($task_class, vocab_size=16, input_seq_len=16, num_examples=32, lag=3,
               invalid=[{"lag": 0}, {"lag": 16}])


def test_labels_are_the_tokens_lag_positions_back():
    seg = $task_class(vocab_size=16, input_seq_len=16, num_examples=8, lag=3).generate(seed=0)
    assert (seg.labels[:, :3] == -100).all()
    assert torch.equal(seg.labels[:, 3:], seg.inputs[:, :-3])
''')

MIXER_TESTS = Template('''

def test_mixer_conformance():  # also checks recurrent() against forward() and state_size
    check_mixer($mixer_class, d_model=32, kernel_size=4)


def test_state_does_not_grow_with_length():
    mixer = $mixer_class(d_model=16, kernel_size=4)
    assert mixer.state_size(10) == mixer.state_size(10_000) == 16 * 3
''')

EXAMPLE = Template('''\
$about
#   pip install -e .
#   zoology run examples/$name.toml

[data]
batch_size = 64
seed = 1

[[data.train]]
$data
num_examples = 4_000

[[data.test]]
$data
num_examples = 256

[model]
d_model = 32
n_layers = 2
sequence_mixer = $mixer

[train]
max_epochs = 5
learning_rate = 3e-3
early_stopping = { metric = "valid/accuracy", threshold = 0.99 }
''')

README = Template('''\
# zoology-$name

A [Zoology](https://github.com/HazyResearch/zoology) plugin: $what.

```bash
pip install -e '.[test]'       # into the environment Zoology is installed in
pytest                         # the conformance checks and the components' own tests
zoology plugins                # lists "$ident" with what it registers
zoology show $show
zoology run examples/$name.toml
```

## What is here

- `pyproject.toml`: the `[project.entry-points.zoology]` table is the whole plugin
  declaration: `$ident = "$package.plugin"`.
- `src/$package/plugin.py`: the hooks; each registers its components.
$files- `tests/`: `zoology.testing.check_task` / `check_mixer`, then what makes each component
  itself. Keep them passing as you edit.
- `examples/$name.toml`: an experiment that uses the plugin.

Names must be unique across installed plugins: rename the components (`name = ...`) to
what they are. The plugin guide: Zoology's `docs/plugins.md`.
''')


def new_plugin(name: str, out: str | Path = ".", task: bool = True, mixer: bool = True) -> Path:
    """Write the package ``zoology-NAME`` into ``out`` and return its folder. ``NAME``:
    lowercase letters, digits, ``-`` and ``_`` (``zoology-`` in front is dropped)."""
    name = name.removeprefix("zoology-").removeprefix("zoology_")
    if not NAME.fullmatch(name):
        raise UserError(f"new plugin {name!r}: a name is lowercase letters, digits, '-' and '_', "
                        "starting with a letter (e.g. my-recall)")
    if not (task or mixer):
        raise UserError("new plugin: nothing to write (give --task, --mixer or neither for both)")
    ident = name.replace("-", "_")
    package = f"zoology_{ident}"
    root = Path(out) / f"zoology-{name}"
    if root.exists():
        raise UserError(f"{root}: already exists; choose another name or --out")
    camel = "".join(part.capitalize() for part in ident.split("_"))
    subs = {
        "name": name, "ident": ident, "package": package, "title": f"zoology-{name}",
        "zoology_version": __version__, "task_class": f"{camel}Lookback", "task_name": f"{ident}_lookback",
        "mixer_class": f"{camel}Conv", "mixer_name": f"{ident}_conv",
    }
    parts = [p for p, on in (("a delayed-copy task", task), ("a short-convolution mixer", mixer)) if on]
    subs["what"] = " and ".join(parts)
    # (module, class), sorted by module as import sorters want them
    parts_on = [(m, c) for m, c, on in (("mixer", subs["mixer_class"], mixer), ("task", subs["task_class"], task)) if on]
    modules = [m for m, _ in parts_on]
    classes = [c for _, c in parts_on]
    imports = "\n".join(f"from {package}.{m} import {c}" for m, c in parts_on)
    files: dict[str, str] = {
        "pyproject.toml": PYPROJECT.substitute(subs),
        f"src/{package}/__init__.py": INIT.substitute(subs, imports=imports, all=", ".join(f'"{c}"' for c in classes)),
        f"src/{package}/plugin.py": PLUGIN.substitute(
            subs, imports=imports,
            hooks=(TASK_HOOK.substitute(subs) if task else "") + (MIXER_HOOK.substitute(subs) if mixer else "")),
        f"tests/test_{ident}.py": TESTS.substitute(
            subs, imports="\n".join([*(["import torch"] if task else []), "from zoology import load_registry",
                                      "from zoology.testing import " + ", ".join(
                                          [*(["check_mixer"] if mixer else []), *(["check_task"] if task else [])]),
                                      f"from {package} import {', '.join(classes)}"]),
            tests=(TASK_TESTS.substitute(subs) if task else "") + (MIXER_TESTS.substitute(subs) if mixer else ""),
            registered="".join(f'    assert reg.get("{k}", "{subs[k + "_name"]}").plugin == "{ident}"\n'
                               for k in reversed(modules))),
    }
    if task:
        files[f"src/{package}/task.py"] = TASK.substitute(subs)
        data = (f'task = "{subs["task_name"]}"\nvocab_size = 16\ninput_seq_len = 32\nlag = 2')
    else:
        data = 'task = "mqar"\nvocab_size = 32\ninput_seq_len = 32\nnum_kv_pairs = 4'
    if mixer:
        files[f"src/{package}/mixer.py"] = MIXER.substitute(subs)
        model = f'{{ name = "{subs["mixer_name"]}", kernel_size = 4 }}'
    else:
        model = '{ name = "attention", num_heads = 2 }'
    about = {(True, True): "the delayed-copy task (lag 2) on the short-convolution mixer, which sees "
                           "the last 4 positions, so it can learn it; chance is 1/16",
             (True, False): "the delayed-copy task (lag 2) on attention; chance is 1/16",
             (False, True): "the short-convolution mixer on MQAR (4 pairs); a short convolution alone "
                            "cannot recall far back, so expect it near the 1/4 plateau"}[(task, mixer)]
    about = textwrap.fill(f"{subs['title']}'s example: {about}.", 88, initial_indent="# ", subsequent_indent="# ")
    files[f"examples/{name}.toml"] = EXAMPLE.substitute(subs, about=about, data=data, mixer=model)
    listed = "".join(f"- `src/{package}/{m}.py`: {d}\n" for m, d, on in (
        ("task", f"`{subs['task_class']}`, registered as `{subs['task_name']}`", task),
        ("mixer", f"`{subs['mixer_class']}`, registered as `{subs['mixer_name']}`", mixer)) if on)
    show = f"task {subs['task_name']}" if task else f"mixer {subs['mixer_name']}"
    files["README.md"] = README.substitute(subs, files=listed, show=show)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
