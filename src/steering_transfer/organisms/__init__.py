"""The model-organism zoo: specs from a zoo TOML file, deterministic builds, a safe cache.

Modules by job: ``spec`` (:class:`OrganismSpec`, parsing a zoo file, defaults, cache keys,
which zoo file is the default), ``cache`` (cache folders, manifest and completion marker,
verification, build records), ``build`` (training and evaluating organisms), ``load``
(organisms as model handles, built on demand), ``report`` (``reports/organisms.md``), ``cli``
(``steering-transfer zoo list/build``), ``training`` (the fine-tuning loop) and ``recipes``
(what each task's organisms are trained on and evaluated by).

Which zoo file: functions take ``spec_path``; without it, ``$STEERING_TRANSFER_ZOO``, else the
file given to :func:`set_default_zoo`, else ``fixtures/zoo.toml`` in the current directory.

The public names below are imported on first use (PEP 562), like the package's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..lazy import lazy_attribute

if TYPE_CHECKING:
    from .build import build_organism, ensure_organism, training_options
    from .cache import COMPLETE, MANIFEST, RECORD, organism_dir, organism_record, verify_folder
    from .load import load_organism
    from .report import render_report, report_records, write_report
    from .spec import (
        CODE_VERSION,
        DATA_DEFAULTS,
        TRAINING_DEFAULTS,
        ZOO_ENV,
        OrganismSpec,
        default_spec_path,
        get_spec,
        load_zoo,
        set_default_zoo,
    )
    from .training import TrainingOptions, TrainResult, train_causal_lm

# public name -> submodule defining it
_LAZY: dict[str, str] = {
    **dict.fromkeys(("build_organism", "ensure_organism", "training_options"), "build"),
    **dict.fromkeys(
        ("COMPLETE", "MANIFEST", "RECORD", "organism_dir", "organism_record", "verify_folder"),
        "cache",
    ),
    "load_organism": "load",
    **dict.fromkeys(("render_report", "report_records", "write_report"), "report"),
    **dict.fromkeys(
        (
            "CODE_VERSION",
            "DATA_DEFAULTS",
            "TRAINING_DEFAULTS",
            "ZOO_ENV",
            "OrganismSpec",
            "default_spec_path",
            "get_spec",
            "load_zoo",
            "set_default_zoo",
        ),
        "spec",
    ),
    **dict.fromkeys(("TrainingOptions", "TrainResult", "train_causal_lm"), "training"),
}

__all__ = [
    "CODE_VERSION",
    "COMPLETE",
    "DATA_DEFAULTS",
    "MANIFEST",
    "RECORD",
    "TRAINING_DEFAULTS",
    "ZOO_ENV",
    "OrganismSpec",
    "TrainResult",
    "TrainingOptions",
    "build_organism",
    "default_spec_path",
    "ensure_organism",
    "get_spec",
    "load_organism",
    "load_zoo",
    "organism_dir",
    "organism_record",
    "render_report",
    "report_records",
    "set_default_zoo",
    "train_causal_lm",
    "training_options",
    "verify_folder",
    "write_report",
]


def __getattr__(name: str) -> Any:
    """Import a public name's submodule on first access and cache the name in the package."""
    return lazy_attribute(__name__, globals(), _LAZY, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
