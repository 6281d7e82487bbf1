"""`zoology new plugin`: the generated package installs, passes its own tests, is listed by
`zoology plugins` and trains its example.

The package is installed editable into a throwaway environment layered on the test
environment (a venv whose site-packages also reads the test venv's), so the test never
changes the environment it runs in; uninstalling it is checked too."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from zoology.cli import main

ROOT = Path(__file__).resolve().parents[1]


def layered_venv(path: Path) -> Path:
    """A venv without pip of its own that sees the test venv's packages; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    base = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "zoology_test_base.pth").write_text(f"import site; site.addsitedir({base!r})\n")
    return python


def test_generated_plugin_installs_passes_its_tests_and_trains(tmp_path, capsys):
    assert main(["new", "plugin", "demo", "--out", str(tmp_path)]) == 0
    pkg = tmp_path / "zoology-demo"
    assert "pyproject.toml" in capsys.readouterr().out
    assert main(["new", "plugin", "demo", "--out", str(tmp_path)]) == 2  # never overwrites
    assert 'demo = "zoology_demo.plugin"' in (pkg / "pyproject.toml").read_text()

    python = layered_venv(tmp_path / "venv")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}

    def run(*args, check=True):
        done = subprocess.run([str(python), *args], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert not check or done.returncode == 0, done.stdout + done.stderr
        return done

    run("-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", str(pkg))
    tests = run("-m", "pytest", "-q", "-p", "no:cacheprovider", str(pkg))
    assert "5 passed" in tests.stdout
    plugins = {p["name"]: p for p in json.loads(run("-m", "zoology", "plugins", "--json").stdout)}
    assert plugins["demo"]["error"] is None and plugins["demo"]["distribution"] == "zoology-demo"
    assert set(plugins["demo"]["components"]) == {"task:demo_lookback", "mixer:demo_conv"}
    run("-m", "zoology", "run", str(pkg / "examples" / "demo.toml"), "--out", str(tmp_path / "runs"), "--quiet",
        "--set", "train.max_epochs=1", "--set", "data.train.0.num_examples=512")
    summary = json.loads((tmp_path / "runs" / "demo" / "default" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["epochs"] == 1
    assert summary["state_size"] == 2 * 32 * 3  # 2 layers × d_model × (kernel_size - 1)

    run("-m", "pip", "uninstall", "-y", "zoology-demo")
    plugins = json.loads(run("-m", "zoology", "plugins", "--json").stdout)
    assert "demo" not in {p["name"] for p in plugins}


@pytest.mark.parametrize("flag, files, absent", [
    ("--task", {"task.py"}, "mixer.py"),
    ("--mixer", {"mixer.py"}, "task.py"),
])
def test_task_or_mixer_alone(tmp_path, flag, files, absent):
    assert main(["new", "plugin", "solo", flag, "--out", str(tmp_path)]) == 0
    src = tmp_path / "zoology-solo" / "src" / "zoology_solo"
    assert files <= {p.name for p in src.iterdir()} and not (src / absent).exists()
    plugin = (src / "plugin.py").read_text()
    assert ("zoology_register_tasks" in plugin) == (flag == "--task")
    assert ("zoology_register_mixers" in plugin) == (flag == "--mixer")


def test_generated_components_pass_the_conformance_kit_in_process(tmp_path, monkeypatch):
    """The same checks the generated tests call, without installing: fast feedback on the templates."""
    from zoology.testing import check_mixer, check_task

    main(["new", "plugin", "inproc", "--out", str(tmp_path)])
    monkeypatch.syspath_prepend(str(tmp_path / "zoology-inproc" / "src"))
    from zoology_inproc import InprocConv, InprocLookback

    check_task(InprocLookback, vocab_size=16, input_seq_len=16, num_examples=32, lag=3,
               invalid=[{"lag": 0}, {"lag": 16}])
    check_mixer(InprocConv, d_model=32, kernel_size=4)
    check_mixer(InprocConv, d_model=8, kernel_size=1)  # no state at all


def test_bad_names_are_refused(tmp_path, capsys):
    assert main(["new", "plugin", "9lives", "--out", str(tmp_path)]) == 2
    assert "lowercase letters" in capsys.readouterr().err
