"""Plugin discovery through entry points, with fake installed distributions in a temp dir."""

import importlib
import json
import sys
import textwrap

import pytest

from zoology.cli import main
from zoology.plugins import PluginError, UnknownComponent, get_registry, load_registry

GOOD = '''
import torch
import zoology
from zoology.tasks.mqar import MQAR


class Echo(torch.nn.Module):
    """Copies each position's input (a causal no-op mixer).

    Args:
        scale: multiplies the output
    """

    name = "echo"

    def __init__(self, d_model: int, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale

    def state_size(self, seq_len: int) -> int:
        return 0


class Gain(torch.nn.Module):
    """A per-position state mixer: a learned gain per channel."""

    name = "gain"
    role = "state"

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(torch.ones(d_model))

    def forward(self, x):
        return x * self.gain

    def state_size(self, seq_len: int) -> int:
        return 0


class MQARTwin(MQAR):
    """MQAR under another name."""
    name = "mqar_twin"


@zoology.hookimpl
def zoology_register_mixers(register):
    register(Echo)
    register(Gain)


@zoology.hookimpl
def zoology_register_tasks(register):
    register(MQARTwin)
'''

PLUGINS = {
    "good": GOOD,
    "broken": "import does_not_exist\n",
    "dup": textwrap.dedent('''
        import zoology
        from zoology.mixers.attention import Attention

        @zoology.hookimpl
        def zoology_register_mixers(register):
            register(Attention)  # "attention" is the built-in's name
    '''),
    "typo": textwrap.dedent('''
        import zoology

        @zoology.hookimpl
        def zoology_register_mixer(register):
            pass
    '''),
    "badarg": textwrap.dedent('''
        import zoology

        @zoology.hookimpl
        def zoology_register_tasks(registr):
            pass
    '''),
    "raises": textwrap.dedent('''
        import torch
        import zoology

        class Untyped(torch.nn.Module):
            name = "untyped"

            def __init__(self, d_model, width=2):  # no type hints: not a valid mixer
                super().__init__()

        @zoology.hookimpl
        def zoology_register_mixers(register):
            register(Untyped)
    '''),
}


def install(tmp_path, names):
    """Fake `pip install`: a module plus a dist-info with an entry point, on sys.path."""
    for name in names:
        module = f"zoo_{name}"
        (tmp_path / f"{module}.py").write_text(PLUGINS[name])
        dist = tmp_path / f"zoology_{name}-1.2.3.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: zoology-{name}\nVersion: 1.2.3\n")
        (dist / "entry_points.txt").write_text(f"[zoology]\n{name} = {module}\n")
    return tmp_path


@pytest.fixture
def installed(tmp_path, monkeypatch):
    def _install(*names):
        install(tmp_path, names)
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()
        get_registry.cache_clear()
        return tmp_path

    yield _install
    get_registry.cache_clear()
    for name in PLUGINS:
        sys.modules.pop(f"zoo_{name}", None)


def test_builtins_registered_through_hooks():
    reg = load_registry(autoload=False)
    assert "mqar" in reg.names("task")
    assert {"attention", "mlp", "glu", "identity"} <= set(reg.names("mixer"))
    comp = reg.get("mixer", "attention")
    assert comp.plugin == "zoology.builtin"
    assert {"num_heads", "num_kv_heads", "dropout"} <= {p.name for p in comp.params}


def test_unknown_name_suggests():
    reg = load_registry(autoload=False)
    with pytest.raises(UnknownComponent, match=r"did you mean 'attention'.*available: .*mlp"):
        reg.get("mixer", "atention")


def test_good_plugin_appears(installed, capsys):
    installed("good")
    reg = load_registry()
    assert reg.get("mixer", "echo").plugin == "good"
    assert reg.get("task", "mqar_twin").version == "1.2.3"
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "good" in out and "zoology-good" in out and "1.2.3" in out and "mixer:echo" in out
    line = next(x for x in out.splitlines() if x.startswith("good "))
    assert "zoo_good" in line and "tasks, mixers" in line  # entry point and hooks
    assert main(["plugins", "--json"]) == 0
    info = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert info["good"]["entry_point"] == "zoo_good" and info["good"]["distribution"] == "zoology-good"
    assert set(info["good"]["hooks"]) == {"zoology_register_tasks", "zoology_register_mixers"}
    assert info["good"]["components"] == ["task:mqar_twin", "mixer:echo", "mixer:gain"]
    assert main(["mixers"]) == 0
    assert "echo" in capsys.readouterr().out


def test_plugin_state_mixer_is_registered_and_benchmarked_as_one(installed):
    from zoology.bench import bench_mixers

    installed("good")
    reg = load_registry()
    assert reg.get("mixer", "gain").role == "state" and reg.get("mixer", "echo").role == "sequence"
    get_registry.cache_clear()
    rows = list(bench_mixers(["gain", "echo"], lengths=(16, 32), d_model=8, tokens_per_batch=64, repeats=1))
    assert sorted((r["mixer"], r["role"], r["seq_len"]) for r in rows) == [
        ("echo", "sequence", 16), ("echo", "sequence", 32), ("gain", "state", 16)]


def test_plugin_component_usable_in_toml(installed, write, base_toml):
    installed("good")
    from zoology.config import load_experiment

    exp = load_experiment(write(base_toml.replace('name = "attention", num_heads = 2', 'name = "echo", scale = 0.5')))
    assert exp.model.sequence_mixer[0].params == {"scale": 0.5}


def test_broken_plugin_is_a_warning_and_builtins_work(installed, capsys):
    installed("broken", "good")
    with pytest.warns(UserWarning, match="broken.*does_not_exist"):
        reg = load_registry()
    assert "attention" in reg.names("mixer") and "echo" in reg.names("mixer")
    assert reg.plugins["broken"].error
    with pytest.warns(UserWarning):
        assert main(["plugins"]) == 0
    assert "FAILED" in capsys.readouterr().out


def test_strict_mode_makes_it_fatal(installed, monkeypatch):
    installed("broken")
    monkeypatch.setenv("ZOOLOGY_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken"):
        load_registry()


def test_autoload_can_be_disabled(installed, monkeypatch):
    installed("good")
    monkeypatch.setenv("ZOOLOGY_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "echo" not in load_registry().names("mixer")


def test_duplicate_name_rejected_naming_both(installed):
    installed("dup")
    with pytest.warns(UserWarning, match=r"'attention' is already registered by plugin 'zoology.builtin'; plugin 'dup'"):
        reg = load_registry()
    assert reg.get("mixer", "attention").plugin == "zoology.builtin"


def test_misspelled_hook_and_argument(installed):
    installed("typo", "badarg")
    with pytest.warns(UserWarning) as record:
        reg = load_registry()
    messages = " | ".join(str(w.message) for w in record)
    assert "typo" in messages and "zoology_register_mixer" in messages
    assert "badarg" in messages and "registr" in messages
    assert "mqar" in reg.names("task")


def test_hook_that_raises_names_the_plugin(installed, capsys):
    installed("raises", "good")
    with pytest.warns(UserWarning, match=r"'raises'.*zoology_register_mixers raised TypeError.*width"):
        reg = load_registry()
    assert "untyped" not in reg.names("mixer")
    assert {"attention", "echo"} <= set(reg.names("mixer"))


def test_failed_plugins_listed_with_their_error(installed, capsys):
    installed("broken", "dup", "typo", "badarg", "good")
    with pytest.warns(UserWarning):
        assert main(["plugins", "--json"]) == 0
    info = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert "does_not_exist" in info["broken"]["error"]
    assert "already registered" in info["dup"]["error"]
    assert "zoology_register_mixer" in info["typo"]["error"]
    assert "registr" in info["badarg"]["error"]
    assert info["good"]["error"] is None and info["zoology.builtin"]["error"] is None
    assert main(["plugins"]) == 0  # the registry is built once per process: no second warning
    lines = {x.split()[0]: x for x in capsys.readouterr().out.splitlines()[2:]}
    assert all("FAILED" in lines[n] for n in ("broken", "dup", "typo", "badarg"))
    assert "FAILED" not in lines["good"]
    assert main(["tasks"]) == 0  # the CLI keeps working with the built-ins and good plugins
    assert "mqar_twin" in capsys.readouterr().out
