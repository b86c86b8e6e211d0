"""The offline LLM judge (digit logits of a local model) and the judge factory, on a tiny model.

A randomly initialised Llama with a toy tokenizer and a toy chat template: its grades mean
nothing, but every mechanical property (ints 0-5, determinism, batch == one by one, the same
user text as the HTTP judge, the factory's choice) is checked offline in about a second.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from steering_transfer.errors import SteeringTransferError
from steering_transfer.judges import (
    JUDGE_SKIP_REASON,
    LLMJudge,
    LocalLLMJudge,
    compare_completions,
    judge_from_env,
    rouge_n,
)
from steering_transfer.judges import local_llm as local_module
from steering_transfer.judges.llm import (
    COHERENCE_RUBRIC,
    KEY_ENV,
    MODEL_ENV,
    SIMILARITY_RUBRIC,
    URL_ENV,
    coherence_user_text,
    similarity_user_text,
)
from steering_transfer.judges.local_llm import (
    DIGITS,
    LOCAL_DTYPE_ENV,
    LOCAL_ENV,
    DigitScore,
    digit_token_ids,
)
from steering_transfer.models import wrap_model
from steering_transfer.toy import DEFAULT_CORPUS, build_tokenizer, tiny_model

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
REFS = [
    "Mix flour, water, salt and yeast, then bake the dough.",
    "The capital of France is Paris.",
    "def reverse(text):\n    return text[::-1]",
]
CANDS = [
    "Combine flour, yeast and water; bake it.",
    "the the the the the the the the",
    "def area(r):\n    return 3.14 * r * r",
]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    # own tokenizer (the chat template is set here), trained on the rubrics too so that the
    # judge prompts are ~150 tokens rather than ~500 single bytes: the tests stay fast
    corpus = [*DEFAULT_CORPUS, SIMILARITY_RUBRIC, COHERENCE_RUBRIC]
    tok = build_tokenizer(corpus, kind="bpe", vocab_size=1000)
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def lm(tokenizer: PreTrainedTokenizerFast) -> Any:
    return tiny_model("llama", vocab_size=len(tokenizer), seed=5)


@pytest.fixture()
def judge(lm: Any, tokenizer: PreTrainedTokenizerFast) -> LocalLLMJudge:
    return LocalLLMJudge(lm, tokenizer, name="tiny-judge", batch_size=2)


def test_digit_scores_are_ints_0_to_5_and_deterministic(
    lm: Any, tokenizer: PreTrainedTokenizerFast
) -> None:
    first = LocalLLMJudge(lm, tokenizer, name="tiny-judge")
    again = LocalLLMJudge(lm, tokenizer, name="tiny-judge")  # no shared memo: computed anew
    sims = first.similarities(CANDS, REFS)
    cohs = first.coherences(CANDS)
    assert all(isinstance(s, int) and 0 <= s <= 5 for s in sims + cohs)
    assert again.similarities(CANDS, REFS) == sims and again.coherences(CANDS) == cohs
    assert first.similarity(CANDS[0], REFS[0]) == sims[0]
    assert first.coherence(CANDS[1]) == cohs[1]
    for score in first.score_similarities(CANDS, REFS):
        assert isinstance(score, DigitScore) and len(score.probs) == len(DIGITS)
        assert sum(score.probs) == pytest.approx(1.0, abs=1e-5)
        assert score.expected == pytest.approx(sum(k * p for k, p in enumerate(score.probs)))
        assert 0.0 <= score.expected <= 5.0
        assert score.score == max(range(6), key=lambda k: score.probs[k])
        assert score.to_dict()["score"] == score.score
    assert first.expected_similarities(CANDS, REFS) == [
        s.expected for s in first.score_similarities(CANDS, REFS)
    ]


def test_argmax_matches_the_full_forward(judge: LocalLLMJudge) -> None:
    text = judge.prompt(SIMILARITY_RUBRIC, similarity_user_text(CANDS[0], REFS[0]))
    ids = judge.tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        logits = judge.lm(**ids).logits[0, -1]
    digits = logits[judge.digit_ids]
    (score,) = judge.score_similarities(CANDS[:1], REFS[:1])
    assert score.score == int(digits.argmax())
    expected = float((digits.softmax(-1) * torch.arange(6.0)).sum())
    assert score.expected == pytest.approx(expected, abs=1e-5)


def test_batched_equals_one_by_one(lm: Any, tokenizer: PreTrainedTokenizerFast) -> None:
    batched = LocalLLMJudge(lm, tokenizer, name="b", batch_size=3)
    single = LocalLLMJudge(lm, tokenizer, name="s", batch_size=1)
    full = LocalLLMJudge(lm, tokenizer, name="f", batch_size=3)
    full._keeps_logits = False  # the path for models without logits_to_keep
    texts = [*CANDS, *REFS]  # prompts of different lengths: left padding in play
    b = batched.score_coherences(texts)
    s = single.score_coherences(texts)
    f = full.score_coherences(texts)
    assert [x.score for x in b] == [x.score for x in s] == [x.score for x in f]
    for x, y, z in zip(b, s, f, strict=True):
        assert x.expected == pytest.approx(y.expected, abs=1e-5)
        assert x.expected == pytest.approx(z.expected, abs=1e-5)


def test_user_texts_are_the_http_judges(
    judge: LocalLLMJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = LLMJudge("http://127.0.0.1:9/v1", "remote")
    asked: list[tuple[str, str]] = []

    def fake_ask(system: str, user: str) -> str:
        asked.append((system, user))
        return "3"

    monkeypatch.setattr(http, "ask", fake_ask)
    seen: list[tuple[str, list[str]]] = []
    real = judge.score_prompts

    def spy(system: str, users: list[str]) -> list[DigitScore]:
        seen.append((system, list(users)))
        return real(system, users)

    monkeypatch.setattr(judge, "score_prompts", spy)
    http.similarity(CANDS[0], REFS[0])
    http.coherence(CANDS[1])
    judge.similarity(CANDS[0], REFS[0])
    judge.coherence(CANDS[1])
    assert seen == [(s, [u]) for s, u in asked]
    assert asked[0] == (SIMILARITY_RUBRIC, similarity_user_text(CANDS[0], REFS[0]))
    assert asked[1] == (COHERENCE_RUBRIC, coherence_user_text(CANDS[1]))
    # the prompt the model reads: rubric as the system turn, the user text, then the answer
    text = judge.prompt(*asked[0])
    assert text == f"<|system|>{SIMILARITY_RUBRIC}<eos><|user|>{asked[0][1]}<eos><|assistant|>"


def test_a_template_without_system_role_gets_the_rubric_in_the_user_turn(
    lm: Any, tokenizer: PreTrainedTokenizerFast
) -> None:
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = NO_SYSTEM_TEMPLATE
    judge = LocalLLMJudge(lm, tok, name="no-system")
    text = judge.prompt("RUBRIC", "USER")
    assert text == "<|user|>RUBRIC\n\nUSER<eos><|assistant|>"
    assert 0 <= judge.coherence("fine text") <= 5


def test_works_in_compare_completions_and_from_a_handle(
    lm: Any, tokenizer: PreTrainedTokenizerFast
) -> None:
    class WordOverlap:
        name = "word-overlap"

        def similarity(self, a: list[str], b: list[str]) -> torch.Tensor:
            return torch.tensor([rouge_n(x, y, 1) for x, y in zip(a, b, strict=True)])

    judge = LocalLLMJudge.from_handle(wrap_model(lm, tokenizer, model_id="tiny-handle"))
    assert judge.model == "tiny-handle" and "tiny-handle" in repr(judge)
    result = compare_completions(CANDS, REFS, CANDS[::-1], embedder=WordOverlap(), llm=judge)
    assert result.llm_model == "tiny-handle"
    assert result.llm_similarity_mapped is not None and 0 <= result.llm_similarity_mapped <= 5
    assert result.llm_coherence_ablated is not None


# ---------------------------------------------------------------------------------- factory


def _clear_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (URL_ENV, MODEL_ENV, KEY_ENV, LOCAL_ENV, LOCAL_DTYPE_ENV):
        monkeypatch.delenv(name, raising=False)
    local_module._cached_local_judge.cache_clear()


def test_factory_picks_the_judge_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, lm: Any, tokenizer: PreTrainedTokenizerFast
) -> None:
    _clear_env(monkeypatch)
    loads: list[tuple[str, Any]] = []

    def fake_load(spec: str, *, dtype: Any = "float32", **kwargs: Any) -> LocalLLMJudge:
        loads.append((spec, dtype))
        return LocalLLMJudge(lm, tokenizer, name=spec)

    monkeypatch.setattr(LocalLLMJudge, "load", staticmethod(fake_load))
    assert judge_from_env() is None
    with pytest.raises(SteeringTransferError, match=LOCAL_ENV):
        judge_from_env(require=True)
    assert LOCAL_ENV in JUDGE_SKIP_REASON

    monkeypatch.setenv(LOCAL_ENV, "qwen2.5-coder-1.5b-instruct")
    local = judge_from_env()
    assert isinstance(local, LocalLLMJudge) and local.model == "qwen2.5-coder-1.5b-instruct"
    assert judge_from_env() is local  # loaded once per process
    assert loads == [("qwen2.5-coder-1.5b-instruct", "float32")]
    monkeypatch.setenv(LOCAL_DTYPE_ENV, "bfloat16")
    judge_from_env()
    assert loads[-1] == ("qwen2.5-coder-1.5b-instruct", "bfloat16")

    monkeypatch.setenv(URL_ENV, "http://127.0.0.1:9/v1")  # a URL wins, as before
    monkeypatch.setenv(MODEL_ENV, "remote-judge")
    remote = judge_from_env()
    assert isinstance(remote, LLMJudge) and remote.model == "remote-judge"
    monkeypatch.delenv(MODEL_ENV)
    assert judge_from_env() is None  # URL without model: LLMJudge.from_env's behaviour
    local_module._cached_local_judge.cache_clear()


def test_factory_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_env(monkeypatch)
    monkeypatch.setenv(LOCAL_ENV, "no-such-model")
    with pytest.raises(SteeringTransferError, match=rf"\${LOCAL_ENV}='no-such-model'"):
        judge_from_env()
    monkeypatch.setenv(LOCAL_DTYPE_ENV, "float31")
    with pytest.raises(SteeringTransferError, match=LOCAL_DTYPE_ENV):
        judge_from_env()
    local_module._cached_local_judge.cache_clear()


# ------------------------------------------------------------------------------ bad inputs


class _SplitDigits:
    unk_token_id = 3

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [10, 11] if text == "4" else [20 + int(text)]


class _SameDigit:
    unk_token_id = 3

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [7]


def test_digit_token_ids(tokenizer: PreTrainedTokenizerFast) -> None:
    ids = digit_token_ids(tokenizer)
    assert len(set(ids)) == 6
    assert [tokenizer.decode([i]) for i in ids] == list(DIGITS)
    with pytest.raises(SteeringTransferError, match="digit '4'"):
        digit_token_ids(_SplitDigits())
    with pytest.raises(SteeringTransferError, match="not distinct"):
        digit_token_ids(_SameDigit())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda j: j.similarities(["a", "b"], ["a"]), "completions has 2 texts but references"),
        (lambda j: j.similarities("a", ["a"]), "completions must be a list"),
        (lambda j: j.similarities(["a"], []), "references is empty"),
        (lambda j: j.coherences([1]), r"completions\[0\] is int"),
        (lambda j: j.similarity(None, "a"), "completion must be a str"),
        (lambda j: j.similarity("a", 3), "reference must be a str"),
        (lambda j: j.coherence(b"x"), "completion must be a str"),
        (lambda j: j.score_prompts("", ["a"]), "system must be"),
    ],
)
def test_bad_calls_name_the_parameter(judge: LocalLLMJudge, call: Any, message: str) -> None:
    with pytest.raises(SteeringTransferError, match=message):
        call(judge)


def test_bad_construction_names_the_parameter(
    lm: Any, tokenizer: PreTrainedTokenizerFast
) -> None:
    with pytest.raises(SteeringTransferError, match="lm must be a loaded causal LM"):
        LocalLLMJudge("qwen2.5-coder-1.5b-instruct", tokenizer)
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(SteeringTransferError, match="no chat_template"):
        LocalLLMJudge(lm, plain)
    with pytest.raises(SteeringTransferError, match="batch_size must be an int >= 1"):
        LocalLLMJudge(lm, tokenizer, batch_size=0)
    with pytest.raises(SteeringTransferError, match="name must be a non-empty string"):
        LocalLLMJudge(lm, tokenizer, name=" ")
    with pytest.raises(SteeringTransferError, match="spec='no-such-model'"):
        LocalLLMJudge.load("no-such-model")
