"""The command line's manners: --version, a closed pipe, plain text, table widths, defaults in --help."""

import subprocess
import sys

import pytest

from zoology import __version__
from zoology.cli import build_parser, main, plain
from zoology.tables import format_table


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"zoology {__version__}"


def test_closed_pipe_ends_quietly():
    """`zoology tasks | head -1`: the reader is gone before zoology writes (it needs a second
    to start), so every write hits a closed pipe."""
    proc = subprocess.Popen([sys.executable, "-m", "zoology", "tasks"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_plain_text_has_no_rst_marks():
    text = plain("Query ``k1 k2`` at offset ``3g``; see :func:`zoology.distinct` and `x`.\n\nExample::\n\n    code")
    assert text == "Query k1 k2 at offset 3g; see zoology.distinct and x.\n\nExample:\n\n    code"


def test_show_prints_no_double_backticks(capsys):
    for kind, name in (("task", "compositional_mqar"), ("task", "associative_recall"), ("mixer", "rwkv7")):
        assert main(["show", kind, name]) == 0
        assert "``" not in capsys.readouterr().out


def test_table_cut_to_a_width_from_its_longest_column():
    header = ["name", "plugin", "description"]
    rows = [["mqar", "zoology.builtin", "Multi-query associative recall: " + "x" * 80], ["a", "b", "short"]]
    assert format_table(header, rows).splitlines()[2].endswith("x" * 80)  # no limit: whole lines
    lines = format_table(header, rows, width=60).splitlines()
    assert max(map(len, lines)) == 60 and lines[2].endswith("…")
    assert lines[2].startswith("mqar  zoology.builtin  Multi-query")  # the short columns stay whole
    wrapped = format_table(header, rows, width=60, wrap=True).splitlines()
    assert max(map(len, wrapped)) <= 60 and len(wrapped) > 4 and "…" not in "".join(wrapped)


def test_plugins_table_fits_the_width_json_keeps_everything(capsys):
    assert main(["plugins", "--width", "110"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) <= 110 and lines[2].endswith("…")
    assert main(["plugins", "--json"]) == 0
    assert "task:mqar" in capsys.readouterr().out


def test_help_shows_defaults():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    assert "(default: 1.0)" in sub["run"].format_help()  # --cpus-per-run
    assert "(default: state_size)" in sub["report"].format_help()  # --x
    assert "(default: None)" not in sub["report"].format_help()
    assert "(default: False)" not in sub["run"].format_help()
