"""Offline LLM judge: the paper's LLM-J (similarity) and COH (coherence) from a local causal LM.

:class:`LocalLLMJudge` asks a locally loaded instruct model the same questions as
:class:`~steering_transfer.judges.llm.LLMJudge` (the same rubrics as the system turn, the same
user text), but reads its answer from the logits instead of generated text: at the first
answer position it restricts the next-token distribution to the six tokens ``"0"`` .. ``"5"``
and takes the argmax (deterministic, never an unparseable reply). The softmax over those six
logits also gives an expected score, a continuous grade (:class:`DigitScore`). Prompts are
batched with left padding and scored under ``torch.inference_mode``; device and dtype are the
loaded model's.

:func:`judge_from_env` picks the judge for experiments: ``STEERING_TRANSFER_JUDGE_URL`` (with
``STEERING_TRANSFER_JUDGE_MODEL``) gives the HTTP judge as before; otherwise
``STEERING_TRANSFER_JUDGE_LOCAL=<packaged model name, folder or hub id>`` gives this one
(``STEERING_TRANSFER_JUDGE_LOCAL_DTYPE``, default ``float32``, sets its dtype); neither gives
None.

Weakness, stated plainly: this is a small model judging. Small instruct models have a
position and verbosity bias (they lean on one digit, and favour longer or more fluent text),
confuse "on the same topic" with "says the same thing", and are weak on subtle paraphrase and
code semantics. On our calibration set the integer grade of qwen2.5-coder-1.5b-instruct gives
every non-identical pair the same 4 while its expected grade still orders the categories, and
the 0.5B model grades at chance. Its grades are a second opinion beside the embedding judge,
not ground truth: compare mapped with ablated grades from the same judge, never with the
paper's GPT-4o-mini numbers, and check it on ``reports/judge_calibration.md``
(``steering-transfer judge-calibrate``) before trusting a difference.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import SteeringTransferError
from ..validate import check_count, check_texts
from .llm import (
    COHERENCE_RUBRIC,
    MODEL_ENV,
    SIMILARITY_RUBRIC,
    URL_ENV,
    LLMJudge,
    coherence_user_text,
    similarity_user_text,
)

if TYPE_CHECKING:
    from ..models import ModelHandle

__all__ = [
    "DIGITS",
    "JUDGE_SKIP_REASON",
    "LOCAL_DTYPE_ENV",
    "LOCAL_ENV",
    "DigitScore",
    "LocalLLMJudge",
    "digit_token_ids",
    "judge_from_env",
]

LOCAL_ENV = "STEERING_TRANSFER_JUDGE_LOCAL"
LOCAL_DTYPE_ENV = "STEERING_TRANSFER_JUDGE_LOCAL_DTYPE"
JUDGE_SKIP_REASON = (
    f"no LLM judge configured: set {URL_ENV} and {MODEL_ENV} (an OpenAI-compatible endpoint) "
    f"or {LOCAL_ENV} (a packaged instruct model, e.g. qwen2.5-coder-1.5b-instruct)"
)
DIGITS = ("0", "1", "2", "3", "4", "5")
_MEMO_SIZE = 4096  # scored prompts kept, so argmax and expected grades cost one forward


@dataclass(frozen=True)
class DigitScore:
    """One grade: ``score`` is the argmax over the digit tokens 0-5, ``expected`` the mean of
    0..5 under the softmax restricted to those tokens, ``probs`` that softmax."""

    score: int
    expected: float
    probs: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "expected": self.expected, "probs": list(self.probs)}


def digit_token_ids(tokenizer: Any) -> list[int]:
    """The token ids of ``"0"`` .. ``"5"`` as a model would emit them first in its answer.

    Each digit must encode to one token (true of Qwen2.5, SmolLM2, Gemma and Llama-3
    tokenizers); a tokenizer that splits a digit, maps it to the unknown token or gives two
    digits one id is refused, since its logits could not be read as a 0-5 grade.
    """
    ids: list[int] = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for digit in DIGITS:
        encoded = list(tokenizer.encode(digit, add_special_tokens=False))
        if len(encoded) != 1 or encoded[0] == unk:
            raise SteeringTransferError(
                f"tokenizer encodes the digit {digit!r} as {encoded} (not one known token); "
                "LocalLLMJudge reads the grade from the logits of the single-token digits 0-5, "
                "so use a model whose tokenizer has them (e.g. qwen2.5-coder-1.5b-instruct)"
            )
        ids.append(int(encoded[0]))
    if len(set(ids)) != len(ids):
        raise SteeringTransferError(
            f"tokenizer maps the digits 0-5 to the ids {ids}, which are not distinct"
        )
    return ids


def _check_pair(
    completions: Sequence[str], references: Sequence[str]
) -> tuple[list[str], list[str]]:
    c = check_texts(completions, param="completions")
    r = check_texts(references, param="references")
    if len(c) != len(r):
        raise SteeringTransferError(f"completions has {len(c)} texts but references has {len(r)}")
    return c, r


class LocalLLMJudge:
    """0-5 similarity and coherence grades from a locally loaded instruct model.

    ``LocalLLMJudge(model, tokenizer)`` wraps an already loaded causal LM and its tokenizer
    (which needs a chat template); :meth:`load` loads one by packaged name, folder or hub id
    through :func:`steering_transfer.models.load_model`. ``model`` (the attribute) is the
    judge's name as records store it, as for :class:`~steering_transfer.judges.llm.LLMJudge`;
    the network is ``lm``.
    """

    def __init__(
        self, lm: Any, tokenizer: Any, *, name: str | None = None, batch_size: int = 8
    ) -> None:
        if not isinstance(lm, torch.nn.Module):
            raise SteeringTransferError(
                f"lm must be a loaded causal LM (a torch.nn.Module), got {type(lm).__name__}; "
                "use LocalLLMJudge.load(name) to load a packaged model"
            )
        if not callable(getattr(tokenizer, "apply_chat_template", None)) or not getattr(
            tokenizer, "chat_template", None
        ):
            raise SteeringTransferError(
                f"tokenizer ({type(tokenizer).__name__}) has no chat_template; LocalLLMJudge "
                "needs an instruct model's tokenizer (e.g. qwen2.5-coder-1.5b-instruct)"
            )
        if name is None:
            name = str(getattr(lm.config, "_name_or_path", "") or type(lm).__name__)
        if not isinstance(name, str) or not name.strip():
            raise SteeringTransferError(
                f"name must be a non-empty string naming the judge model, got {name!r}"
            )
        self.lm = lm.eval()
        self.tokenizer = tokenizer
        self.model = name
        self.batch_size = check_count(batch_size, param="batch_size")
        self.digit_ids = digit_token_ids(tokenizer)
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            pad = getattr(tokenizer, "eos_token_id", None)
        self._pad_id = int(pad) if isinstance(pad, int) else 0  # masked out either way
        self._keeps_logits = "logits_to_keep" in inspect.signature(lm.forward).parameters
        self._memo: OrderedDict[tuple[str, str], DigitScore] = OrderedDict()

    @classmethod
    def load(
        cls,
        spec: str | Path,
        *,
        dtype: torch.dtype | str = "float32",
        device: str | torch.device | None = None,
        batch_size: int = 8,
    ) -> LocalLLMJudge:
        """Load the judge model by packaged name (e.g. ``qwen2.5-coder-1.5b-instruct``),
        local folder or hub id, as :func:`~steering_transfer.models.load_model` does."""
        from ..models import load_model

        handle = load_model(spec, dtype=dtype, device=device)
        return cls(handle.model, handle.tokenizer, name=handle.model_id, batch_size=batch_size)

    @classmethod
    def from_handle(cls, handle: ModelHandle, *, batch_size: int = 8) -> LocalLLMJudge:
        """A judge around an already loaded :class:`~steering_transfer.models.ModelHandle`."""
        return cls(handle.model, handle.tokenizer, name=handle.model_id, batch_size=batch_size)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device  # type: ignore[no-any-return]

    @property
    def dtype(self) -> torch.dtype:
        return next(self.lm.parameters()).dtype  # type: ignore[no-any-return]

    def prompt(self, system: str, user: str) -> str:
        """The chat-formatted text the model reads, ending where its answer starts.

        A template that refuses a system turn (e.g. Gemma-2's) gets the rubric at the top of
        the user turn instead.
        """
        from jinja2.exceptions import TemplateError

        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except TemplateError:
            merged = [{"role": "user", "content": f"{system}\n\n{user}"}]
            text = self.tokenizer.apply_chat_template(
                merged, tokenize=False, add_generation_prompt=True
            )
        if not isinstance(text, str):
            raise SteeringTransferError(
                f"the tokenizer's chat template returned {type(text).__name__}, not text"
            )
        return text

    def score_prompts(self, system: str, users: Sequence[str]) -> list[DigitScore]:
        """A :class:`DigitScore` per user text under the rubric ``system``, in input order."""
        if not isinstance(system, str) or not system.strip():
            raise SteeringTransferError("system must be a non-empty rubric string")
        users = check_texts(users, param="users")
        todo = [u for u in dict.fromkeys(users) if (system, u) not in self._memo]
        if todo:
            ids = [
                list(self.tokenizer(self.prompt(system, u), add_special_tokens=False)["input_ids"])
                for u in todo
            ]
            # longest first, so each batch pads little and an out-of-memory error comes early
            order = sorted(range(len(todo)), key=lambda i: -len(ids[i]))
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                for i, digit_score in zip(chunk, self._score_ids([ids[i] for i in chunk]),
                                          strict=True):
                    self._remember((system, todo[i]), digit_score)
        return [self._memo[(system, u)] for u in users]

    def _remember(self, key: tuple[str, str], value: DigitScore) -> None:
        self._memo[key] = value
        self._memo.move_to_end(key)
        while len(self._memo) > _MEMO_SIZE:
            self._memo.popitem(last=False)

    def _score_ids(self, batch: list[list[int]]) -> list[DigitScore]:
        """Grades for one batch of token-id lists (left-padded into one forward pass)."""
        width = max(len(row) for row in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for k, row in enumerate(batch):
            if not row:
                raise SteeringTransferError("a judge prompt encodes to no tokens")
            input_ids[k, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[k, width - len(row) :] = 1
        # positions count real tokens only, so a left-padded row reads as it would alone
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {"use_cache": False}
        if self._keeps_logits:
            kwargs["logits_to_keep"] = 1  # the vocabulary-wide logits of one position only
        device = self.device
        with torch.inference_mode():
            out = self.lm(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=positions.to(device),
                **kwargs,
            )
            logits = out.logits[:, -1, self.digit_ids].float().cpu()
        if not bool(torch.isfinite(logits).all()):
            raise SteeringTransferError(
                f"the judge model {self.model} produced NaN/inf logits ({self.dtype}); load it "
                "in float32 or check its weights"
            )
        probs = torch.softmax(logits, dim=-1)
        grades = torch.arange(len(DIGITS), dtype=probs.dtype)
        expected = (probs * grades).sum(dim=-1)
        best = logits.argmax(dim=-1)  # first maximum on ties: deterministic
        return [
            DigitScore(int(best[k]), float(expected[k]), tuple(float(p) for p in probs[k]))
            for k in range(len(batch))
        ]

    def score_similarities(
        self, completions: Sequence[str], references: Sequence[str]
    ) -> list[DigitScore]:
        """:class:`DigitScore` of each ``completions[i]`` against ``references[i]``."""
        c, r = _check_pair(completions, references)
        users = [similarity_user_text(x, y) for x, y in zip(c, r, strict=True)]
        return self.score_prompts(SIMILARITY_RUBRIC, users)

    def score_coherences(self, completions: Sequence[str]) -> list[DigitScore]:
        """:class:`DigitScore` of the coherence of each completion."""
        users = [coherence_user_text(x) for x in check_texts(completions, param="completions")]
        return self.score_prompts(COHERENCE_RUBRIC, users)

    def similarity(self, completion: str, reference: str) -> int:
        """0-5: how close ``completion`` is in meaning to ``reference`` (5 = same meaning)."""
        _require_text(completion, "completion")
        _require_text(reference, "reference")
        return self.score_similarities([completion], [reference])[0].score

    def coherence(self, completion: str) -> int:
        """0-5: how coherent ``completion`` is as language (5 = perfectly coherent)."""
        _require_text(completion, "completion")
        return self.score_coherences([completion])[0].score

    def similarities(self, completions: Sequence[str], references: Sequence[str]) -> list[int]:
        """:meth:`similarity` for each pair, batched."""
        return [s.score for s in self.score_similarities(completions, references)]

    def coherences(self, completions: Sequence[str]) -> list[int]:
        """:meth:`coherence` for each completion, batched."""
        return [s.score for s in self.score_coherences(completions)]

    def expected_similarities(
        self, completions: Sequence[str], references: Sequence[str]
    ) -> list[float]:
        """The expected similarity grade (continuous, 0-5) of each pair."""
        return [s.expected for s in self.score_similarities(completions, references)]

    def expected_coherences(self, completions: Sequence[str]) -> list[float]:
        """The expected coherence grade (continuous, 0-5) of each completion."""
        return [s.expected for s in self.score_coherences(completions)]

    def __repr__(self) -> str:
        return f"LocalLLMJudge(model={self.model!r}, device={self.device}, dtype={self.dtype})"


def _require_text(value: object, param: str) -> None:
    if not isinstance(value, str):
        raise SteeringTransferError(f"{param} must be a str, got {type(value).__name__}")


@functools.lru_cache(maxsize=2)
def _cached_local_judge(spec: str, dtype: str) -> LocalLLMJudge:
    """One loaded judge per (model, dtype) per process: a bench run asks for it per cell."""
    try:
        return LocalLLMJudge.load(spec, dtype=dtype)
    except SteeringTransferError as exc:
        raise SteeringTransferError(f"${LOCAL_ENV}={spec!r}: {exc}") from None


def judge_from_env(*, require: bool = False) -> LLMJudge | LocalLLMJudge | None:
    """The LLM judge the environment names, or None when none is (raise if ``require``).

    ``$STEERING_TRANSFER_JUDGE_URL`` set: the HTTP judge, exactly as ``LLMJudge.from_env``.
    Otherwise ``$STEERING_TRANSFER_JUDGE_LOCAL`` set: a :class:`LocalLLMJudge` of that model
    (loaded once per process) in ``$STEERING_TRANSFER_JUDGE_LOCAL_DTYPE`` (default float32).
    """
    if os.environ.get(URL_ENV, "").strip():
        return LLMJudge.from_env(require=require)
    spec = os.environ.get(LOCAL_ENV, "").strip()
    if spec:
        dtype = os.environ.get(LOCAL_DTYPE_ENV, "").strip() or "float32"
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise SteeringTransferError(
                f"${LOCAL_DTYPE_ENV}={dtype!r} is not a torch dtype; use float32 or bfloat16"
            )
        return _cached_local_judge(spec, dtype)
    if require:
        raise SteeringTransferError(JUDGE_SKIP_REASON)
    return None
