"""Exact arithmetic of the hook context managers on three architectures."""

from __future__ import annotations

import pytest
import torch

from steering_transfer import hooks
from steering_transfer.errors import SteeringTransferError
from steering_transfer.generation import generate
from steering_transfer.models import ModelHandle
from steering_transfer.positions import FromIndex

TEXTS = ["the quick brown fox jumps", "hello"]


def _enc(handle: ModelHandle) -> dict[str, torch.Tensor]:
    return handle.tokenize(TEXTS)


def _hidden_states(handle: ModelHandle, enc: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return handle.model(**enc, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_capture_equals_hidden_states(handle: ModelHandle, layer: int) -> None:
    enc = _enc(handle)
    states = _hidden_states(handle, enc)
    with torch.no_grad(), hooks.capture(handle, [layer]) as cap:
        handle.model(**enc)
    # hidden_states[0] is the embedding output, so block L's output is hidden_states[L + 1]
    assert torch.equal(cap[layer], states[layer + 1])


def test_capture_last_layer_is_pre_final_norm(handle: ModelHandle) -> None:
    enc = _enc(handle)
    states = _hidden_states(handle, enc)
    with torch.no_grad(), hooks.capture(handle, -1) as cap:
        handle.model(**enc)
    normed = handle.model.model.norm(cap[-1])
    assert torch.allclose(normed, states[-1], atol=1e-5)


def test_capture_early_exit_stops_forward(handle: ModelHandle) -> None:
    enc = _enc(handle)
    reached: list[int] = []
    last_block = handle.blocks[-1]
    h = last_block.register_forward_hook(lambda *a: reached.append(1))
    try:
        ran_after = False
        with torch.no_grad(), hooks.capture(handle, [1], stop_forward=True) as cap:
            handle.model(**enc)
            ran_after = True
    finally:
        h.remove()
    assert not reached and not ran_after
    assert torch.equal(cap[1], _hidden_states(handle, enc)[2])


@pytest.mark.parametrize("positions", ["all", "last", [0, 2], FromIndex(3)])
def test_add_changes_exactly_chosen_positions(handle: ModelHandle, positions: object) -> None:
    enc = _enc(handle)
    layer, alpha = 1, 2.5
    vector = torch.randn(handle.hidden_size)
    with torch.no_grad(), hooks.capture(handle, [layer]) as base:
        handle.model(**enc)
    steer = hooks.add(handle, layer, vector, alpha, positions=positions)  # type: ignore[arg-type]
    with torch.no_grad(), steer, hooks.capture(handle, [layer]) as steered:
        handle.model(**enc)
    seq = enc["input_ids"].shape[1]
    expected_positions = {
        "all": list(range(seq)),
        "last": [seq - 1],
    }.get(positions if isinstance(positions, str) else "")
    if expected_positions is None:
        expected_positions = [0, 2] if isinstance(positions, list) else list(range(3, seq))
    expected = base[layer].clone()
    expected[:, expected_positions] = expected[:, expected_positions] + alpha * vector
    assert torch.equal(steered[layer], expected)


def test_add_with_boolean_mask_and_per_row_vectors(llama: ModelHandle) -> None:
    enc = llama.tokenize(TEXTS)
    mask = torch.zeros_like(enc["input_ids"], dtype=torch.bool)
    mask[0, 1] = True
    mask[1, 0] = True
    vectors = torch.randn(2, llama.hidden_size)
    with torch.no_grad(), hooks.capture(llama, [0]) as base:
        llama.model(**enc)
    with (
        torch.no_grad(),
        hooks.add(llama, 0, vectors, positions=mask),
        hooks.capture(llama, [0]) as out,
    ):
        llama.model(**enc)
    expected = base[0].clone()
    expected[0, 1] += vectors[0]
    expected[1, 0] += vectors[1]
    assert torch.equal(out[0], expected)


def test_add_during_cached_generation_uses_absolute_positions(llama: ModelHandle) -> None:
    """FromIndex(k) beyond the prompt must only steer generated tokens."""
    prompt = ["the quick brown fox"]
    n_prompt = llama.tokenize(prompt)["input_ids"].shape[1]
    vector = torch.randn(llama.hidden_size) * 50
    plain = generate(llama, prompt, max_new_tokens=6)
    # steering that starts after the prompt leaves the first generated token unchanged
    late = generate(
        llama,
        prompt,
        max_new_tokens=6,
        intervention=lambda prompts, enc: hooks.add(
            llama, 1, vector, positions=FromIndex(n_prompt)
        ),
    )
    early = generate(
        llama,
        prompt,
        max_new_tokens=6,
        intervention=lambda prompts, enc: hooks.add(llama, 1, vector, positions="all"),
    )
    tok = llama.tokenizer
    first = tok(plain[0], add_special_tokens=False)["input_ids"][:1]
    assert tok(late[0], add_special_tokens=False)["input_ids"][:1] == first
    assert early != plain


def test_ablate_removes_direction_everywhere(handle: ModelHandle) -> None:
    enc = _enc(handle)
    direction = torch.randn(handle.hidden_size)
    unit = direction / direction.norm()
    with torch.no_grad(), hooks.ablate(handle, direction), hooks.capture(handle, "all") as cap:
        handle.model(**enc)
    for layer in range(handle.n_layers):
        assert (cap[layer] @ unit).abs().max() < 1e-4


def test_ablate_per_row_directions(handle: ModelHandle) -> None:
    """One direction per batch row (a zero row = untouched) equals ablating row by row."""
    enc = _enc(handle)
    batch = enc["input_ids"].shape[0]
    assert batch >= 2
    direction = torch.randn(handle.hidden_size)
    rows = torch.zeros(batch, handle.hidden_size)
    rows[0] = direction * 3.0
    with torch.no_grad():
        plain = handle.model(**enc).logits
        with hooks.ablate(handle, direction):
            single = handle.model(**enc).logits
        with hooks.ablate(handle, rows):
            mixed = handle.model(**enc).logits
    torch.testing.assert_close(mixed[0], single[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mixed[1:], plain[1:])


def test_ablate_selected_layers_only(llama: ModelHandle) -> None:
    enc = llama.tokenize(TEXTS)
    direction = torch.randn(llama.hidden_size)
    unit = direction / direction.norm()
    with (
        torch.no_grad(),
        hooks.ablate(llama, direction, layers=[2]),
        hooks.capture(llama, [1, 2]) as cap,
    ):
        llama.model(**enc)
    assert (cap[2] @ unit).abs().max() < 1e-4
    assert (cap[1] @ unit).abs().max() > 1e-2


def test_replace_with_tensor_and_function(handle: ModelHandle) -> None:
    enc = _enc(handle)
    new = torch.randn(*enc["input_ids"].shape, handle.hidden_size)
    with torch.no_grad(), hooks.replace(handle, 1, new), hooks.capture(handle, [1, 2]) as cap:
        handle.model(**enc)
    assert torch.equal(cap[1], new)
    with (
        torch.no_grad(),
        hooks.replace(handle, 1, lambda h: h * 0),
        hooks.capture(handle, [1]) as cap2,
    ):
        handle.model(**enc)
    assert torch.count_nonzero(cap2[1]) == 0


def test_hooks_removed_after_exception(handle: ModelHandle) -> None:
    vector = torch.randn(handle.hidden_size)
    block = handle.block(1)

    def counts() -> list[int]:  # transformers installs hooks of its own; count relative to them
        return [len(m._forward_hooks) for m in handle.model.modules()]

    before = counts()
    with (
        pytest.raises(RuntimeError, match="boom"),
        hooks.add(handle, 1, vector),
        hooks.capture(handle, [1]),
    ):
        assert len(block._forward_hooks) == before[list(handle.model.modules()).index(block)] + 2
        raise RuntimeError("boom")
    assert counts() == before
    with pytest.raises(RuntimeError), hooks.ablate(handle, vector):
        assert counts() != before
        raise RuntimeError("boom")
    assert counts() == before


def test_negative_layers_resolve(llama: ModelHandle) -> None:
    enc = llama.tokenize(TEXTS)
    with torch.no_grad(), hooks.capture(llama, [-2, 2]) as cap:
        llama.model(**enc)
    assert cap.layers == [2]
    assert torch.equal(cap[-2], cap[2])


def test_vector_cast_to_activation_dtype(llama: ModelHandle) -> None:
    enc = llama.tokenize(TEXTS)
    vector = torch.randn(llama.hidden_size, dtype=torch.float64)
    with torch.no_grad(), hooks.add(llama, 0, vector), hooks.capture(llama, [0]) as cap:
        llama.model(**enc)
    assert cap[0].dtype == torch.float32


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda h: hooks.add(h, 99, torch.zeros(h.hidden_size)), "layer=99 is out of range"),
        (lambda h: hooks.add(h, 0, torch.zeros(h.hidden_size + 1)), "hidden size"),
        (lambda h: hooks.add(h, 0, torch.full((h.hidden_size,), float("nan"))), "NaN"),
        (lambda h: hooks.add(h, 0, torch.zeros(h.hidden_size), positions="first"), "positions"),
        (
            lambda h: hooks.add(h, 0, torch.zeros(h.hidden_size), positions=[]),
            "positions is an empty",
        ),
        (lambda h: hooks.ablate(h, torch.zeros(h.hidden_size)), "zero norm"),
        (lambda h: hooks.capture(h, []), "layers is empty"),
        (lambda h: hooks.replace(h, 0, torch.zeros(3, 7)), "replacement has hidden size"),
    ],
)
def test_bad_hook_arguments(llama: ModelHandle, call: object, match: str) -> None:
    with pytest.raises(SteeringTransferError, match=match), call(llama):  # type: ignore[operator]
        pass


def test_positions_beyond_sequence_raise(llama: ModelHandle) -> None:
    enc = llama.tokenize(["hi"])
    vector = torch.zeros(llama.hidden_size)
    with (
        pytest.raises(SteeringTransferError, match="beyond the prompt"),
        hooks.add(llama, 0, vector, positions=[50]),
    ):
        llama.model(**enc)
