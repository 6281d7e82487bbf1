"""The example plugin (plugins/zoology-example) installed for real, through its entry point.

Skipped unless it is installed: `pip install -e plugins/zoology-example` (CI does).
"""

import json
import time
from pathlib import Path

import pytest

pytest.importorskip("zoology_example")

from zoology.cli import main
from zoology.plugins import get_registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "plugins/zoology-example/examples/multi_hop_gru.toml"


@pytest.fixture(autouse=True)
def fresh_registry():
    get_registry.cache_clear()
    yield
    get_registry.cache_clear()


def test_listed_by_zoology_plugins(capsys):
    assert main(["plugins", "--json"]) == 0
    info = {p["name"]: p for p in json.loads(capsys.readouterr().out)}["example"]
    assert info["distribution"] == "zoology-example" and info["version"] == "0.1.0"
    assert info["entry_point"] == "zoology_example.plugin" and info["error"] is None
    assert set(info["hooks"]) == {"zoology_register_tasks", "zoology_register_mixers"}
    assert set(info["components"]) == {"task:example_multi_hop_recall", "mixer:example_gru"}
    assert main(["plugins"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("example "))
    for text in ("zoology-example", "0.1.0", "zoology_example.plugin", "tasks, mixers", "ok",
                 "mixer:example_gru"):
        assert text in line


@pytest.mark.parametrize("kind, name", [("tasks", "example_multi_hop_recall"), ("mixers", "example_gru")])
def test_components_listed_with_the_plugin_name(kind, name, capsys):
    assert main([kind, "--json"]) == 0
    comps = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    assert comps[name]["plugin"] == "example" and comps[name]["version"] == "0.1.0"
    assert main(["show", kind[:-1], name]) == 0
    assert "(plugin example)" in capsys.readouterr().out


def test_example_trains_well_above_chance(tmp_path, capsys):
    """3 chains of 1 hop: chance is 1/3 (guessing among the value tokens); reaches ~0.94."""
    start = time.time()
    assert main(["run", str(EXAMPLE), "--out", str(tmp_path), "--quiet"]) == 0
    summary = json.loads((tmp_path / "multi_hop_gru" / "default" / "summary.json").read_text())
    assert summary["status"] == "done"
    assert summary["test"]["test/accuracy"] > 0.8, summary["test"]
    assert summary["state_size"] == 2 * 128  # 2 layers × hidden_size
    assert time.time() - start < 300
