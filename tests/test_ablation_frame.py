"""The calibrated ablation frame: inactive (Arditi unchanged) without massive dimensions; with
one, the direction loses it, the projection is centred and special positions stay untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from steering_transfer import hooks
from steering_transfer.ablation import calibrate_ablation
from steering_transfer.errors import SteeringTransferError
from steering_transfer.models import ModelHandle, wrap_model

PROMPTS = [
    "<bos>the quick brown fox jumps over the lazy dog",
    "<bos>hello there, how are you today",
    "<bos>a small model reads a few words",
    "<bos>numbers like 12 and 7 and words",
]
MASSIVE = 5


@pytest.fixture(scope="module")
def massive(llama: ModelHandle) -> ModelHandle:
    """``llama`` with a large constant in one residual dimension at every token (as Gemma-3's)."""
    model = copy.deepcopy(llama.model)
    embeddings = model.get_input_embeddings()
    assert isinstance(embeddings, torch.nn.Embedding)
    with torch.no_grad():
        embeddings.weight[:, MASSIVE] += 300.0
    return wrap_model(model, llama.tokenizer, model_id="tiny-llama-massive")


def _logits(handle: ModelHandle, **ablation: object) -> torch.Tensor:
    enc = handle.tokenize(PROMPTS)
    with torch.no_grad():
        if not ablation:
            return handle.model(**enc).logits
        with hooks.ablate(handle, **ablation):  # type: ignore[arg-type]
            return handle.model(**enc).logits


def test_no_massive_dims_gives_arditi_unchanged(handle: ModelHandle) -> None:
    frame = calibrate_ablation(handle, PROMPTS)
    assert not frame.active and frame.outlier_dims == () and frame.means == ()
    assert frame.to_dict()["mode"] == "arditi"
    direction = torch.randn(handle.hidden_size, generator=torch.Generator().manual_seed(0))
    assert torch.equal(
        _logits(handle, direction=direction, frame=frame), _logits(handle, direction=direction)
    )


def test_calibration_finds_the_massive_dim(massive: ModelHandle) -> None:
    frame = calibrate_ablation(massive, PROMPTS)
    assert frame.active and MASSIVE in frame.outlier_dims
    assert len(frame.means) == len(hooks.ablation_sites(massive))
    assert set(frame.special_ids) == set(massive.tokenizer.all_special_ids)
    vec = torch.zeros(massive.hidden_size)
    vec[MASSIVE], vec[0] = 3.0, 4.0
    assert frame.removed_share(vec) == pytest.approx(9 / 25)
    assert frame.orthogonalise(vec)[MASSIVE] == 0 and frame.orthogonalise(vec)[0] == 4.0
    assert frame.to_dict()["outlier_dims"] == list(frame.outlier_dims)


def test_active_frame_centres_orthogonalises_and_keeps_specials(massive: ModelHandle) -> None:
    frame = calibrate_ablation(massive, PROMPTS)
    direction = torch.randn(massive.hidden_size, generator=torch.Generator().manual_seed(1))
    unit = frame.orthogonalise(direction)
    unit = unit / unit.norm()
    enc = massive.tokenize(PROMPTS)
    sites = hooks.ablation_sites(massive)
    block_index = [sites.index(b) for b in massive.blocks]
    with torch.no_grad():
        with hooks.capture(massive, "all") as plain:
            massive.model(**enc)
        with hooks.ablate(massive, direction, frame=frame), hooks.capture(massive, "all") as cap:
            massive.model(**enc)
    special = torch.isin(enc["input_ids"], torch.tensor(frame.special_ids))
    assert special[:, 0].all()  # every prompt starts with <bos>
    ordinary = enc["attention_mask"].bool() & ~special
    for layer in range(massive.n_layers):
        centred = (cap[layer] - frame.means[block_index[layer]]) @ unit
        assert centred[ordinary].abs().max() < 1e-3
        # <bos> sees only itself and is never edited: its stream is the untouched one
        torch.testing.assert_close(cap[layer][:, 0], plain[layer][:, 0])
    # Arditi's ablation would instead move every token by the massive dim's projection
    with torch.no_grad(), hooks.ablate(massive, direction), hooks.capture(massive, "all") as raw:
        massive.model(**enc)
    assert (raw[0][:, 0] - plain[0][:, 0]).abs().max() > 1.0


def test_active_frame_per_row_directions_match_single(massive: ModelHandle) -> None:
    frame = calibrate_ablation(massive, PROMPTS)
    direction = torch.randn(massive.hidden_size, generator=torch.Generator().manual_seed(2))
    rows = torch.zeros(len(PROMPTS), massive.hidden_size)
    rows[0] = direction * 2.0
    plain = _logits(massive)
    single = _logits(massive, direction=direction, frame=frame)
    mixed = _logits(massive, direction=rows, frame=frame)
    torch.testing.assert_close(mixed[0], single[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mixed[1:], plain[1:])


def test_active_frame_errors(massive: ModelHandle, llama_wide: ModelHandle) -> None:
    frame = calibrate_ablation(massive, PROMPTS)
    direction = torch.randn(massive.hidden_size)
    with (
        pytest.raises(SteeringTransferError, match="layers='all'"),
        hooks.ablate(massive, direction, [1], frame=frame),
    ):
        pass
    only_massive = torch.zeros(massive.hidden_size)
    only_massive[list(frame.outlier_dims)] = 1.0
    with (
        pytest.raises(SteeringTransferError, match="outlier dimensions"),
        hooks.ablate(massive, only_massive, frame=frame),
    ):
        pass
    other = calibrate_ablation(massive, PROMPTS)
    assert other.outlier_dims == frame.outlier_dims  # deterministic
    wide = torch.randn(llama_wide.hidden_size)
    shifted = hooks.AblationFrame(
        outlier_dims=(1,), means=frame.means, special_ids=frame.special_ids
    )
    with (
        pytest.raises(SteeringTransferError, match="calibrate the frame on this model"),
        hooks.ablate(llama_wide, wide, frame=shifted),
    ):
        pass


def test_calibration_argument_errors(llama: ModelHandle) -> None:
    with pytest.raises(SteeringTransferError, match="prompts"):
        calibrate_ablation(llama, [])
    with pytest.raises(SteeringTransferError, match="factor"):
        calibrate_ablation(llama, PROMPTS, factor=0.5)
