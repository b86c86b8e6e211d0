"""Mapper architectures: recovery of known maps, persistence, determinism and input errors."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from steering_transfer import io
from steering_transfer.errors import SteeringTransferError
from steering_transfer.mappers import (
    AffineMapper,
    AutoencoderConfig,
    AutoencoderMapper,
    Mapper,
    available_mappers,
    create_mapper,
    load_mapper,
)
from steering_transfer.mappers.affine import compute_moments
from steering_transfer.mappers.base import CONFIG_FILE, WEIGHTS_FILE, FitSplit
from steering_transfer.metrics import fvu, mse

#: Cheap hyperparameters per architecture for the generic (parametrized) tests.
FAST: dict[str, dict[str, Any]] = {
    "autoencoder": {"max_epochs": 2, "batch_size": 64, "hidden_dim": 8, "lr": 1e-2},
    "lowrank": {"rank": 3},
}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Iterative fits run thousands of tiny ops; with 2 OpenMP threads on a busy 2-core box each
    op can stall on a descheduled worker (measured: 0.17 s with 1 thread vs up to 17 s with 2
    for the same autoencoder fit). Restores the thread count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_linear_data(
    n: int, d_s: int, d_t: int, *, seed: int = 0, rank: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source with a large offset and anisotropic scales (like residual streams), exact map."""
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-0.5, 0.5, d_s)
    x = torch.randn(n, d_s, generator=gen) * scales + 3.0
    if rank is None:
        weight = torch.randn(d_t, d_s, generator=gen) / math.sqrt(d_s)
    else:
        weight = torch.randn(d_t, rank, generator=gen) @ torch.randn(rank, d_s, generator=gen)
        weight /= math.sqrt(d_s * rank)
    bias = torch.randn(d_t, generator=gen)
    return x, x @ weight.T + bias, weight, bias


def fitted(name: str, d_s: int = 6, d_t: int = 8, n: int = 256) -> tuple[Mapper, torch.Tensor]:
    x, y, _, _ = make_linear_data(n, d_s, d_t)
    mapper = create_mapper(name, d_s, d_t, **FAST.get(name, {}))
    mapper.fit(x, y, show_progress=False)
    return mapper, x


def test_builtin_mappers_are_registered() -> None:
    assert {"affine", "autoencoder", "lowrank", "procrustes"} <= set(available_mappers())


# ------------------------------------------------------------------------------------ affine


def test_affine_closed_form_recovers_linear_map() -> None:
    x, y, weight, bias = make_linear_data(3000, 24, 32)
    mapper = create_mapper("affine", 24, 32)
    report = mapper.fit(x, y, show_progress=False)
    assert (report.n_train, report.n_val) == (2700, 300)  # every mapper holds out a tenth
    assert report.val_fvu is not None and report.val_fvu < 1e-4
    assert float(fvu(mapper.map(x), y)) < 1e-4  # measured ~1e-14
    assert torch.allclose(mapper.linear.weight, weight, atol=1e-4)
    assert torch.allclose(mapper.linear.bias, bias, atol=1e-4)


def test_moments_do_not_depend_on_chunking() -> None:
    x, y, _, _ = make_linear_data(1000, 5, 7)
    a = compute_moments(x, y, chunk_rows=97)  # 1000 is not a multiple of 97
    b = compute_moments(x, y, chunk_rows=10_000)
    assert a.xx is not None and b.xx is not None
    for u, v in ((a.mean_x, b.mean_x), (a.xx, b.xx), (a.xy, b.xy)):
        assert torch.allclose(u, v, rtol=1e-10, atol=1e-12)
    assert a.var_x == pytest.approx(b.var_x, rel=1e-10)


def test_affine_ridge_shrinks_weights_but_not_the_bias() -> None:
    x, y, _, _ = make_linear_data(500, 6, 4)
    plain = create_mapper("affine", 6, 4)
    plain.fit(x, y, show_progress=False)
    strong = create_mapper("affine", 6, 4, ridge=1e8, val_fraction=0.0)  # every row in the mean
    strong.fit(x, y, show_progress=False)
    assert strong.linear.weight.abs().max() < 1e-6
    # With W ~ 0 an unpenalised bias is the target mean.
    assert torch.allclose(strong.linear.bias, y.mean(0), atol=1e-4)
    mild = create_mapper("affine", 6, 4, ridge=0.1)
    mild.fit(x, y, show_progress=False)
    assert mild.linear.weight.norm() < plain.linear.weight.norm()


def test_affine_singular_inputs_fall_back_to_min_norm() -> None:
    x, _, _, _ = make_linear_data(400, 6, 5)
    x = torch.cat([x, torch.full((400, 1), 2.0), x[:, :1]], dim=1)  # constant + duplicate column
    gen = torch.Generator().manual_seed(1)
    y = x @ torch.randn(5, 8, generator=gen).T
    mapper = create_mapper("affine", 8, 5)
    mapper.fit(x, y, show_progress=False)
    assert torch.isfinite(mapper.linear.weight).all()
    assert float(fvu(mapper.map(x), y)) < 1e-8
    # Minimum-norm solution: nothing on the constant column, the duplicate pair split evenly.
    assert mapper.linear.weight[:, 6].abs().max() < 1e-5
    assert torch.allclose(mapper.linear.weight[:, 0], mapper.linear.weight[:, 7], atol=1e-4)


@pytest.mark.usefixtures("one_thread")
def test_affine_sgd_solver_approaches_closed_form() -> None:
    x, y, _, _ = make_linear_data(1024, 8, 6)
    mapper = create_mapper(
        "affine", 8, 6, solver="sgd", lr=2e-2, batch_size=64, max_epochs=15, patience=3
    )
    report = mapper.fit(x, y, show_progress=False)
    assert report.n_val == 102 and report.n_train == 922
    assert len(report.val_loss) == len(report.train_loss) == report.epochs
    # Measured FVU 2.1e-5 (15 epochs, no noise); the closed form gets ~2e-14.
    assert float(fvu(mapper.map(x), y)) < 1e-3


# -------------------------------------------------------------------------------- procrustes


@pytest.mark.parametrize(("d_s", "d_t"), [(12, 16), (10, 10)])
def test_procrustes_recovers_rotation_and_scale(d_s: int, d_t: int) -> None:
    gen = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(d_t, d_t, generator=gen, dtype=torch.float64))
    rotation = q[:, :d_s]  # orthonormal columns
    x = torch.randn(2000, d_s, generator=gen) * torch.linspace(0.5, 2.0, d_s) + 1.5
    offset = torch.randn(d_t, generator=gen)
    y = (2.5 * (x.double() - 1.5) @ rotation.T).float() + offset
    mapper = create_mapper("procrustes", d_s, d_t)
    mapper.fit(x, y, show_progress=False)
    assert torch.allclose(mapper.rotation.double(), rotation, atol=1e-5)
    assert float(mapper.target_scale / mapper.source_scale) == pytest.approx(2.5, rel=1e-5)
    assert torch.allclose(mapper.map(x), y, atol=1e-4)
    eye = torch.eye(d_s)
    assert torch.allclose(mapper.rotation.T @ mapper.rotation, eye, atol=1e-5)


def test_procrustes_wide_to_narrow_is_row_orthonormal() -> None:
    x, y, _, _ = make_linear_data(500, 10, 4)
    mapper = create_mapper("procrustes", 10, 4)
    mapper.fit(x, y, show_progress=False)
    assert torch.allclose(mapper.rotation @ mapper.rotation.T, torch.eye(4), atol=1e-5)


def test_procrustes_constant_source_raises() -> None:
    mapper = create_mapper("procrustes", 3, 3)
    with pytest.raises(SteeringTransferError, match="source has zero variance"):
        mapper.fit(torch.ones(10, 3), torch.randn(10, 3), show_progress=False)


# ----------------------------------------------------------------------------------- lowrank


def test_lowrank_recovers_rank_r_map() -> None:
    x, y, weight, _ = make_linear_data(2000, 16, 20, rank=3)
    mapper = create_mapper("lowrank", 16, 20, rank=3)
    mapper.fit(x, y, show_progress=False)
    assert float(fvu(mapper.map(x), y)) < 1e-8  # measured ~1e-14
    product = mapper.up.weight @ mapper.down.weight
    assert int(torch.linalg.matrix_rank(product.double(), rtol=1e-6)) == 3
    assert torch.allclose(product, weight, atol=1e-4)


def test_lowrank_truncation_beats_nothing_and_full_rank_matches_affine() -> None:
    x, y, _, _ = make_linear_data(1500, 8, 10)
    y = y + 0.1 * torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    errors = []
    for rank in (1, 4, 8):
        mapper = create_mapper("lowrank", 8, 10, rank=rank, ridge=0.01)
        mapper.fit(x, y, show_progress=False)
        errors.append(float(fvu(mapper.map(x), y)))
    assert errors[0] > errors[1] > errors[2]
    affine = create_mapper("affine", 8, 10, ridge=0.01)
    affine.fit(x, y, show_progress=False)
    assert errors[2] == pytest.approx(float(fvu(affine.map(x), y)), rel=1e-4)


# ------------------------------------------------------------------------------- autoencoder


def test_autoencoder_default_hidden_dim_matches_paper() -> None:
    # Paper: Qwen 0.5B -> 1.5B gives h = 1173; Llama 1B -> 3B gives h = 2508.
    assert AutoencoderConfig(source_dim=896, target_dim=1536).hidden_dim == 1173
    assert AutoencoderConfig(source_dim=2048, target_dim=3072).hidden_dim == 2508


def test_autoencoder_state_dict_layout_matches_paper() -> None:
    mapper = create_mapper("autoencoder", 6, 8)
    assert set(mapper.state_dict()) == {
        "encoder.0.weight", "encoder.0.bias", "decoder.weight", "decoder.bias",
    }
    assert mapper.encoder[0].out_features == math.isqrt(48)


@pytest.mark.usefixtures("one_thread")
def test_autoencoder_learns_mildly_nonlinear_map() -> None:
    x, y, _, _ = make_linear_data(1024, 8, 12)
    gen = torch.Generator().manual_seed(4)
    y = y + 0.3 * torch.tanh((x - 3.0) @ torch.randn(8, 12, generator=gen) / 3)
    mapper = create_mapper(
        "autoencoder", 8, 12, hidden_dim=32, lr=2e-2, batch_size=64, max_epochs=15
    )
    report = mapper.fit(x, y, show_progress=False)
    assert report.epochs <= 15 and report.n_val == 102
    assert min(report.val_loss) < report.val_loss[0]
    # Measured FVU 0.0023 (the closed-form affine gets 0.0022 on this map); ~9x margin.
    assert float(fvu(mapper.map(x), y)) < 0.02


@pytest.mark.usefixtures("one_thread")
def test_autoencoder_same_seed_is_bitwise_identical_and_leaves_global_rng() -> None:
    x, y, _, _ = make_linear_data(300, 6, 8)
    kwargs = {**FAST["autoencoder"], "max_epochs": 3}
    rng_before = torch.random.get_rng_state()
    a = create_mapper("autoencoder", 6, 8, seed=7, **kwargs)
    a.fit(x, y, show_progress=False)
    b = create_mapper("autoencoder", 6, 8, seed=7, **kwargs)
    b.fit(x, y, show_progress=False)
    assert torch.equal(rng_before, torch.random.get_rng_state())
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    c = create_mapper("autoencoder", 6, 8, seed=8, **kwargs)
    c.fit(x, y, show_progress=False)
    assert not torch.equal(a.decoder.weight, c.decoder.weight)


@pytest.mark.usefixtures("one_thread")
def test_autoencoder_early_stopping_restores_best_epoch() -> None:
    x, y, _, _ = make_linear_data(400, 6, 8)
    # A far too large learning rate makes the validation loss bounce, so patience triggers.
    mapper = create_mapper(
        "autoencoder", 6, 8, lr=0.5, batch_size=32, max_epochs=40, patience=2,
        standardize=False,
    )
    report = mapper.fit(x, y, show_progress=False)
    assert report.stopped_early
    assert report.epochs < 40
    best = report.val_loss.index(min(report.val_loss))
    assert best == report.epochs - 1 - 2  # the last `patience` epochs did not improve
    # The returned weights are the best epoch's: rebuild the seeded split (seed + 1, as in
    # train_mse) and check the final model's validation MSE equals the best recorded one.
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(1))
    val_rows = perm[: report.n_val]
    assert float(mse(mapper.map(x[val_rows]), y[val_rows])) == pytest.approx(
        min(report.val_loss), rel=1e-5
    )


# ------------------------------------------------------------------------ fixed affine maps


def test_affine_identity_is_exact_and_a_normal_affine_mapper(tmp_path: Path) -> None:
    mapper = AffineMapper.identity(6)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mapper.map(x), x)
    assert torch.equal(mapper.linear.weight, torch.eye(6))
    assert mapper.config == create_mapper("affine", 6, 6).config
    mapper.save(tmp_path)
    assert torch.equal(load_mapper(tmp_path).map(x), x)  # persists like any fitted mapper


def test_affine_from_weights_computes_w_x_plus_b() -> None:
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(8, 6, generator=g), torch.randn(8, generator=g)
    x = torch.randn(4, 6, generator=g)
    mapper = AffineMapper.from_weights(weight, bias, seed=3)
    assert mapper.source_dim == 6 and mapper.target_dim == 8 and mapper.config.seed == 3
    assert torch.allclose(mapper.map(x), x @ weight.T + bias, atol=1e-6)
    assert torch.equal(AffineMapper.from_weights(weight).linear.bias, torch.zeros(8))
    with pytest.raises(SteeringTransferError, match="2-D"):
        AffineMapper.from_weights(torch.zeros(6))
    with pytest.raises(SteeringTransferError, match=r"bias must have shape \(8,\)"):
        AffineMapper.from_weights(weight, torch.zeros(6))
    with pytest.raises(SteeringTransferError, match="NaN"):
        AffineMapper.from_weights(torch.full((2, 2), math.nan))
    with pytest.raises(SteeringTransferError, match="dim must be a positive int"):
        AffineMapper.identity(0)
    with pytest.raises(SteeringTransferError, match="unknown AffineConfig fields"):
        AffineMapper.from_weights(weight, ridge_typo=1.0)


# --------------------------------------------------------------------- every registered mapper


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", available_mappers())
def test_save_load_round_trip_is_bitwise(name: str, tmp_path: Path) -> None:
    mapper, x = fitted(name)
    mapper.save(tmp_path)
    loaded = load_mapper(tmp_path, source_dim=6, target_dim=8)
    assert type(loaded) is type(mapper)
    assert loaded.config == mapper.config
    assert loaded.fit_report == mapper.fit_report  # everything but the wall time
    assert loaded.fit_report is not None and math.isnan(loaded.fit_report.seconds)
    original, restored = mapper.state_dict(), loaded.state_dict()
    assert set(original) == set(restored)
    for key, value in original.items():
        assert restored[key].dtype == value.dtype
        assert torch.equal(restored[key], value), key
    assert torch.equal(loaded.map(x), mapper.map(x))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", available_mappers())
def test_map_keeps_leading_dims_and_dtype(name: str) -> None:
    mapper, x = fitted(name)
    batch = x[:10].reshape(2, 5, 6).double()
    out = mapper.map(batch)
    assert out.shape == (2, 5, 8) and out.dtype == torch.float64
    assert torch.allclose(out.reshape(10, 8).float(), mapper.map(x[:10]), atol=1e-5)


# -------------------------------------------------------------------------------- bad inputs


def test_unknown_mapper_lists_known_ones() -> None:
    with pytest.raises(SteeringTransferError, match=r"unknown mapper 'nope'.*affine.*procrustes"):
        create_mapper("nope", 4, 4)


def test_fit_rejects_wrong_source_dim() -> None:
    mapper = create_mapper("affine", 4, 3)
    with pytest.raises(SteeringTransferError, match="source has hidden size 5 but 4"):
        mapper.fit(torch.randn(10, 5), torch.randn(10, 3), show_progress=False)
    with pytest.raises(SteeringTransferError, match="expects last dimension 4"):
        mapper.map(torch.randn(2, 5))


def test_fit_rejects_mismatched_rows() -> None:
    mapper = create_mapper("affine", 4, 3)
    with pytest.raises(SteeringTransferError, match="source has 10 rows but target has 9"):
        mapper.fit(torch.randn(10, 4), torch.randn(9, 3), show_progress=False)


def test_fit_rejects_nan_source() -> None:
    x = torch.randn(10, 4)
    x[3, 1] = float("nan")
    mapper = create_mapper("lowrank", 4, 3, rank=2)
    with pytest.raises(SteeringTransferError, match="source contains 1 NaN"):
        mapper.fit(x, torch.randn(10, 3), show_progress=False)


def test_load_rejects_wrong_expected_dims(tmp_path: Path) -> None:
    mapper, _ = fitted("affine")
    mapper.save(tmp_path)
    with pytest.raises(SteeringTransferError, match="source_dim=6 but 7 was expected"):
        load_mapper(tmp_path, source_dim=7)
    with pytest.raises(SteeringTransferError, match="target_dim=8 but 9 was expected"):
        load_mapper(tmp_path, target_dim=9)


def test_load_rejects_corrupt_weights(tmp_path: Path) -> None:
    mapper, _ = fitted("procrustes")
    mapper.save(tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"\x00garbage, not safetensors\xff" * 3)
    with pytest.raises(SteeringTransferError, match=r"mapper\.safetensors is not a readable"):
        load_mapper(tmp_path)


def test_unknown_config_field_is_named(tmp_path: Path) -> None:
    with pytest.raises(SteeringTransferError, match=r"unknown AffineConfig fields \['bogus'\]"):
        create_mapper("affine", 4, 4, bogus=1)
    mapper, _ = fitted("affine")
    mapper.save(tmp_path)
    meta = json.loads((tmp_path / CONFIG_FILE).read_text())
    meta["config"]["hiden_dim"] = 3
    (tmp_path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(SteeringTransferError, match="hiden_dim"):
        load_mapper(tmp_path)


@pytest.mark.parametrize(
    ("name", "kwargs", "param"),
    [
        ("affine", {"ridge": -1.0}, "ridge"),
        ("affine", {"solver": "newton"}, "solver"),
        ("affine", {"solver": "sgd", "ridge": 0.1}, "ridge"),
        ("lowrank", {"rank": 5}, "rank"),
        ("lowrank", {"rank": 0}, "rank"),
        ("autoencoder", {"val_fraction": 1.0}, "val_fraction"),
        ("autoencoder", {"hidden_dim": 0}, "hidden_dim"),
        ("autoencoder", {"lr": 0.0}, "lr"),
        ("autoencoder", {"batch_size": 1.5}, "batch_size"),
        ("autoencoder", {"patience": 0}, "patience"),
    ],
)
def test_bad_hyperparameters_name_the_field(
    name: str, kwargs: dict[str, Any], param: str
) -> None:
    with pytest.raises(SteeringTransferError, match=rf"^{param} (must|only)"):
        create_mapper(name, 4, 5, **kwargs)


# ------------------------------------------------------------- folder atomicity and bytes


def _same_mapper(a: Mapper, b: Mapper) -> bool:
    """Same architecture, config and bitwise weights."""
    sa, sb = a.state_dict(), b.state_dict()
    return (type(a) is type(b) and a.config == b.config and set(sa) == set(sb)
            and all(torch.equal(sa[k], sb[k]) for k in sa))


#: Saves the mapper in argv[1] into argv[2] and dies (os._exit) at the kill point argv[3].
_KILL_SCRIPT = """
import os, sys
from pathlib import Path
from steering_transfer import io
from steering_transfer.mappers import base, load_mapper

source, target, point = sys.argv[1], Path(sys.argv[2]).absolute(), sys.argv[3]
mapper = load_mapper(source)
if point == "between-files":  # weights written into the new folder, config not yet
    base.write_json = lambda *a, **k: os._exit(9)
elif point == "after-exchange":  # new folder in place, old one not yet removed
    exchange = io._exchange
    io._exchange = lambda a, b: exchange(a, b) and os._exit(9)
elif point == "aside":  # no atomic exchange: old folder moved aside, new one not yet in
    io._exchange = lambda a, b: False
    rename = os.rename
    def dying_rename(src, dst):
        if Path(dst) == target and Path(src).name.endswith(".tmp"):
            os._exit(9)
        rename(src, dst)
    io.os.rename = dying_rename
mapper.save(target)
"""


@pytest.mark.parametrize(
    ("point", "outcome"),
    [("between-files", "old"), ("after-exchange", "new"), ("aside", "error"),
     ("between-files/first save", "missing")],
)
def test_killed_save_leaves_old_or_new_mapper_never_a_mix(
    tmp_path: Path, point: str, outcome: str
) -> None:
    # Same architecture and widths, different config and weights: a torn folder (new weights
    # under the old config) would load without any error, so only a whole-folder save helps.
    x, y, _, _ = make_linear_data(200, 6, 8, seed=0)
    old = create_mapper("affine", 6, 8)
    old.fit(x, y, show_progress=False)
    x, y, _, _ = make_linear_data(200, 6, 8, seed=1)
    new = create_mapper("affine", 6, 8, ridge=0.5)
    new.fit(x, y, show_progress=False)
    new.save(tmp_path / "staged")
    target = tmp_path / "mapper"
    if outcome != "missing":
        old.save(target)
    if point == "after-exchange" and io._renameat2() is None:
        pytest.skip("no atomic exchange (renameat2) on this platform")
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, str(tmp_path / "staged"), str(target),
         point.split("/")[0]],
        check=False, capture_output=True, text=True,
    )
    assert proc.returncode == 9, proc.stderr
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".mapper.")]
    if outcome in ("old", "new"):
        loaded = load_mapper(target)
        assert _same_mapper(loaded, old if outcome == "old" else new)
        assert not _same_mapper(loaded, new if outcome == "old" else old)
    elif outcome == "error":
        with pytest.raises(SteeringTransferError, match="left the previous mapper at") as info:
            load_mapper(target)
        aside = io.interrupted_swaps(target)[0]
        assert str(aside) in str(info.value)
        aside.rename(target)  # the recovery the message describes
        assert _same_mapper(load_mapper(target), old)
    else:
        with pytest.raises(SteeringTransferError, match="does not exist"):
            load_mapper(target)
    assert leftovers, "the killed save should have left its temporary folder behind"
    # The next save cleans up after the killed one (its writer is gone) and lands whole.
    new.save(target)
    assert _same_mapper(load_mapper(target), new)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mapper.")] == []


def test_save_refuses_a_folder_with_other_files(tmp_path: Path) -> None:
    mapper, _ = fitted("affine")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SteeringTransferError, match=r"other than a mapper's \(notes\.txt\)"):
        mapper.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    mapper.save(tmp_path / "mapper")
    mapper.save(tmp_path / "mapper")  # replacing a mapper folder is fine
    assert sorted(p.name for p in (tmp_path / "mapper").iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]


#: Fits every registered mapper on fixed data and saves each into argv[1]/<name>.
_FIT_SCRIPT = """
import sys, torch
from pathlib import Path
from steering_transfer.mappers import available_mappers, create_mapper

torch.set_num_threads(1)
gen = torch.Generator().manual_seed(0)
x = torch.randn(256, 6, generator=gen) + 3.0
y = x @ torch.randn(6, 8, generator=gen) + torch.tanh(x[:, :1])
fast = {"autoencoder": {"max_epochs": 2, "batch_size": 64, "hidden_dim": 8, "lr": 1e-2},
        "lowrank": {"rank": 3}}
for name in available_mappers():
    mapper = create_mapper(name, 6, 8, **fast.get(name, {}))
    mapper.fit(x, y, show_progress=False)
    mapper.save(Path(sys.argv[1]) / name)
"""


def test_saved_mappers_are_byte_identical_across_processes(tmp_path: Path) -> None:
    digests: list[dict[str, str]] = []
    for seed in ("1", "2"):
        out = tmp_path / f"run{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", _FIT_SCRIPT, str(out)], env=env, check=True)
        digests.append({
            str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()
        })
    assert len(digests[0]) == 2 * len(available_mappers())
    assert digests[0] == digests[1]
    config = json.loads((tmp_path / "run1" / "autoencoder" / CONFIG_FILE).read_text())
    assert "seconds" not in config["fit_report"]  # wall time stays out of the artifact
    assert config["fit_report"]["epochs"] == 2


# ------------------------------------------------- mappers registered from outside the library

#: A user's mapper module: registers itself on import (``-p`` plugins, module entry points).
_SHIFT_MODULE = '''
import torch
from steering_transfer.mappers import FitReport, Mapper, register_mapper


class Shift(Mapper):
    """Keeps the first target_dim coordinates and adds the mean difference."""

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer("shift", torch.zeros(config.target_dim))

    def forward(self, x):
        return x[..., : self.target_dim] + self.shift

    def _fit(self, source, target, show_progress):
        self.shift.copy_((target - source[:, : self.target_dim]).mean(0))
        return FitReport(n_train=len(source), n_val=0)
'''


#: The real scanner, for the test that installs a distribution rather than faking one.
_REAL_ENTRY_POINTS = importlib.metadata.entry_points


class EntryPoints:
    """A stand-in for the installed distributions' entry points: ``declare`` adds one, ``scans``
    lists the groups ``importlib.metadata.entry_points`` was asked for."""

    def __init__(self) -> None:
        self.scans: list[str] = []
        self.entries: list[Any] = []

    def declare(self, name: str, value: str) -> None:
        from steering_transfer.mappers.base import ENTRY_POINT_GROUP

        self.entries.append(
            importlib.metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)
        )

    def __call__(self, **params: Any) -> list[Any]:
        self.scans.append(str(params.get("group")))
        return [e for e in self.entries if e.group == params.get("group")]


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[EntryPoints]:
    """Fake entry points and a registry that scans them afresh, restored afterwards; modules
    written to ``tmp_path`` (named ``st_user_*``) are importable and forgotten afterwards."""
    from steering_transfer.mappers import base

    saved = dict(base._REGISTRY)
    fake = EntryPoints()
    monkeypatch.setattr(base, "_entry_points_state", "pending")
    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield fake
    base._REGISTRY.clear()
    base._REGISTRY.update(saved)
    for name in [n for n in sys.modules if n.startswith("st_user_")]:
        del sys.modules[name]


GROUP = ["steering_transfer.mappers"]


def test_entry_point_module_is_loaded_lazily_once(registry: EntryPoints, tmp_path: Path) -> None:
    (tmp_path / "st_user_shift.py").write_text(
        _SHIFT_MODULE + '\nregister_mapper("user-shift")(Shift)\n'
    )
    registry.declare("user-shift", "st_user_shift")
    assert registry.scans == [] and "st_user_shift" not in sys.modules  # nothing loaded yet
    assert "user-shift" in available_mappers()
    assert registry.scans == GROUP
    assert "affine" in available_mappers() and registry.scans == GROUP  # scanned once
    x = torch.randn(32, 6)
    mapper = create_mapper("user-shift", 6, 4)
    mapper.fit(x, x[:, :4] + 1.0, show_progress=False)
    assert torch.allclose(mapper.map(x), x[:, :4] + 1.0, atol=1e-5)


def test_entry_point_class_is_registered_under_its_name_on_first_lookup(
    registry: EntryPoints, tmp_path: Path
) -> None:
    (tmp_path / "st_user_cls.py").write_text(_SHIFT_MODULE)  # no register_mapper call
    registry.declare("ep-shift", "st_user_cls:Shift")
    mapper = create_mapper("ep-shift", 5, 3)  # creating is a first lookup too
    assert registry.scans == GROUP and mapper.name == "ep-shift"
    mapper.fit(torch.randn(16, 5), torch.randn(16, 3), show_progress=False)
    saved = mapper.save(tmp_path / "saved")
    assert type(load_mapper(saved)).__name__ == "Shift"


@pytest.mark.parametrize(
    ("files", "value", "message"),
    [
        ({}, "st_user_missing", r"No module named 'st_user_missing'"),
        ({"st_user_boom": "raise RuntimeError('boom at import')"}, "st_user_boom",
         r"RuntimeError: boom at import"),
        ({"st_user_attr": "X = 1"}, "st_user_attr:Missing", r"AttributeError"),
        ({"st_user_int": "X = 1"}, "st_user_int:X", r"is a int, not a module or a Mapper"),
    ],
)
def test_broken_entry_point_is_a_clear_error_naming_it(
    registry: EntryPoints, tmp_path: Path, files: dict[str, str], value: str, message: str
) -> None:
    for module, text in files.items():
        (tmp_path / f"{module}.py").write_text(text + "\n")
    registry.declare("bad-one", value)
    head = re.escape(f"mapper entry point 'bad-one' = '{value}'")
    with pytest.raises(SteeringTransferError, match=f"{head}.*{message}"):
        available_mappers()
    with pytest.raises(SteeringTransferError, match=head):  # every time, not just the first
        create_mapper("affine", 2, 2)


def test_entry_point_may_not_replace_a_builtin_mapper(
    registry: EntryPoints, tmp_path: Path
) -> None:
    (tmp_path / "st_user_clash.py").write_text(_SHIFT_MODULE)
    registry.declare("affine", "st_user_clash:Shift")
    with pytest.raises(SteeringTransferError, match=r"entry point 'affine'.*already registered"):
        available_mappers()


def test_entry_point_listing_mappers_on_import_does_not_recurse(
    registry: EntryPoints, tmp_path: Path
) -> None:
    (tmp_path / "st_user_lists.py").write_text(
        _SHIFT_MODULE + "\nfrom steering_transfer.mappers import available_mappers\n"
        "assert 'affine' in available_mappers()\nregister_mapper('listing')(Shift)\n"
    )
    registry.declare("listing", "st_user_lists")
    assert "listing" in available_mappers() and registry.scans == GROUP


def test_entry_point_of_an_installed_distribution(
    registry: EntryPoints, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end through the real importlib.metadata: a dist-info folder on sys.path."""
    monkeypatch.setattr(importlib.metadata, "entry_points", _REAL_ENTRY_POINTS)
    (tmp_path / "st_user_dist.py").write_text(
        _SHIFT_MODULE + '\nregister_mapper("dist-shift")(Shift)\n'
    )
    info = tmp_path / "st_user_pkg-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: st-user-pkg\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(
        "[steering_transfer.mappers]\ndist-shift = st_user_dist\n"
    )
    assert "dist-shift" in available_mappers()
    (info / "entry_points.txt").write_text(
        "[steering_transfer.mappers]\ndist-shift = st_user_dist\nbroken = st_user_nowhere\n"
    )
    monkeypatch.setattr("steering_transfer.mappers.base._entry_points_state", "pending")
    with pytest.raises(
        SteeringTransferError,
        match=r"mapper entry point 'broken' = 'st_user_nowhere' of st-user-pkg 0\.3 "
        r"\(group 'steering_transfer\.mappers'\) failed to load: ModuleNotFoundError",
    ):
        available_mappers()


# ------------------------------------------------------------------------------------ fairness


FAIR_MAPPERS: list[tuple[str, dict[str, Any]]] = [
    ("affine", {}), ("affine", {"solver": "sgd", "lr": 1e-2, "max_epochs": 3}),
    ("lowrank", {"rank": 4}), ("procrustes", {}),
    ("autoencoder", {"lr": 1e-2, "max_epochs": 3}),
]


def test_every_mapper_fits_the_same_rows_and_is_scored_on_the_same_held_out_ones() -> None:
    x, y, _, _ = make_linear_data(400, 8, 6)
    split = FitSplit.draw(400, 0.1, seed=5)
    held = split.val_rows.sort().values
    for name, kwargs in FAIR_MAPPERS:
        mapper = create_mapper(name, 8, 6, seed=5, **kwargs)
        report = mapper.fit(x, y, show_progress=False)
        assert (report.n_train, report.n_val) == (360, 40), name
        expected = float(fvu(mapper.map(x[held]).double(), y[held].double()))
        assert report.val_fvu == pytest.approx(expected, rel=1e-9), name
    # a closed-form fit never sees the held-out rows: it equals a fit on the training rows alone
    rows = split.train_rows.sort().values
    alone = create_mapper("affine", 8, 6, seed=5, val_fraction=0.0)
    alone.fit(x[rows], y[rows], show_progress=False)
    fair = create_mapper("affine", 8, 6, seed=5)
    fair.fit(x, y, show_progress=False)
    assert isinstance(fair, AffineMapper) and isinstance(alone, AffineMapper)
    assert torch.equal(fair.linear.weight, alone.linear.weight)
    assert torch.equal(fair.linear.bias, alone.linear.bias)
    nothing = create_mapper("affine", 8, 6, val_fraction=0.0).fit(x, y, show_progress=False)
    assert (nothing.n_train, nothing.n_val, nothing.val_fvu) == (400, 0, None)


def test_the_closed_form_affine_map_does_not_depend_on_the_trainers_standardisation() -> None:
    # The autoencoder trains on per-dimension standardised inputs and centred, scaled targets;
    # least squares gives the same map either way, so the two see the same problem.
    x, y, _, _ = make_linear_data(600, 8, 6)
    shift, scale = torch.linspace(-50, 50, 8), torch.logspace(-2, 2, 8)
    raw = create_mapper("affine", 8, 6)
    raw.fit(x, y, show_progress=False)
    standardised = create_mapper("affine", 8, 6)
    standardised.fit((x - shift) / scale, (y - 3.0) / 7.0, show_progress=False)
    assert torch.allclose(
        standardised.map((x - shift) / scale) * 7.0 + 3.0, raw.map(x), atol=1e-3, rtol=1e-4
    )


@pytest.mark.parametrize(("dims", "hidden", "expected"), [
    ((64, 64), None, False),  # the paper's width h = 64 for 64 -> 64
    ((896, 1536), None, False),  # Qwen2.5-0.5B -> 1.5B: h = 1173 < 2 * 896
    ((64, 64), 128, True),
    ((16, 256), None, True),  # h = 64 >= 2 * 16
])
def test_autoencoder_says_when_its_width_cannot_carry_an_affine_map(
    dims: tuple[int, int], hidden: int | None, expected: bool,
) -> None:
    kwargs = {} if hidden is None else {"hidden_dim": hidden}
    mapper = create_mapper("autoencoder", *dims, **kwargs)
    assert isinstance(mapper, AutoencoderMapper)
    assert mapper.represents_affine is expected
