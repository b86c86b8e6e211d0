"""Loading organisms as :class:`~steering_transfer.models.ModelHandle` s, building on demand."""

from __future__ import annotations

from pathlib import Path

import torch

from steering_transfer.errors import SteeringTransferError
from steering_transfer.models import ModelHandle, load_model
from steering_transfer.organisms.build import build_organism
from steering_transfer.organisms.cache import (
    organism_dir,
    rebuild_command,
    recover_swap_if_idle,
    verify_folder,
)
from steering_transfer.organisms.spec import OrganismSpec, get_spec


def load_organism(
    organism: str | OrganismSpec,
    *,
    spec_path: str | Path | None = None,
    build: bool = True,
    progress: bool = True,
    dtype: torch.dtype | str = torch.float32,
) -> ModelHandle:
    """Load an organism as a :class:`ModelHandle`, building it on demand.

    An id is looked up in ``spec_path`` (default:
    :func:`~steering_transfer.organisms.default_spec_path`). Hub organisms load by Hugging Face
    id (or a local folder given as ``hub_id``).
    """
    spec = get_spec(organism, spec_path)
    if spec.source == "hub":
        handle = load_model(str(spec.hub_id), dtype=dtype, revision=spec.revision)
    else:
        folder = organism_dir(spec)
        problem = verify_folder(folder)
        if problem is not None and recover_swap_if_idle(folder):  # a killed swap's old version
            problem = verify_folder(folder)
        if problem is not None:
            if not build:
                raise SteeringTransferError(_not_built(spec, folder, problem))
            folder = build_organism(spec, progress=progress)
        handle = load_model(str(folder), dtype=dtype)
    handle.model_id = spec.id
    return handle


def _not_built(spec: OrganismSpec, folder: Path, problem: str) -> str:
    """Why ``spec`` cannot be loaded without building, and the exact command that builds it."""
    if not folder.exists():
        return (
            f"organism {spec.id!r} is not built; run `{rebuild_command(spec, force=False)}` or "
            "pass build=True"
        )
    return (
        f"organism {spec.id!r} is not built: its cache folder {folder} is incomplete or corrupt "
        f"({problem}); rebuild it with `{rebuild_command(spec)}` or pass build=True "
        "(`steering-transfer zoo clean` removes every such folder)"
    )
