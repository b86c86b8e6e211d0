"""Carrying a steering vector into another model's residual stream through a mapper.

The paper leaves open whether a vector is mapped as a difference of mapped activations or
mapped directly; :func:`map_vector` implements both readings (see its docstring).
"""

from __future__ import annotations

from typing import Literal

import torch

from steering_transfer.errors import SteeringTransferError
from steering_transfer.mappers.base import Mapper
from steering_transfer.validate import check_finite, check_matrix

from .steering_vector import MetadataValue, SteeringVector

Reading = Literal["difference", "direct"]



def _map_rows(mapper: Mapper, x: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Map rows in chunks (bounded memory), returning float64 on CPU."""
    outs = [
        mapper.map(x[i : i + chunk]).detach().to("cpu", torch.float64)
        for i in range(0, x.shape[0], chunk)
    ]
    return torch.cat(outs, dim=0)


def map_vector(
    mapper: Mapper,
    *,
    source_vector: SteeringVector | None = None,
    positive_acts: torch.Tensor | None = None,
    negative_acts: torch.Tensor | None = None,
    reading: Reading,
    target_model_id: str,
    target_layer: int,
) -> SteeringVector:
    """Carry a source steering vector into the target's residual stream.

    The paper leaves open which of two readings it means, so both exist:

    * ``"difference"``: ``mean_i M(h+_i) - mean_j M(h-_j)``, needs the per-example source
      activations (:func:`contrastive_activations`);
    * ``"direct"``: ``M(v) - M(0)``, needs ``source_vector``; subtracting the mapped zero keeps
      the mapper's bias out of the direction.

    For an affine mapper they agree (when ``v`` is the difference of those means); for a
    nonlinear mapper they differ. Inputs the chosen reading does not use only feed provenance
    metadata. ``target_layer`` must be resolved (non-negative): use ``target.layer(i)``.
    """
    if not isinstance(mapper, Mapper):
        raise SteeringTransferError(f"mapper must be a Mapper, got {type(mapper).__name__}")
    if reading not in ("difference", "direct"):
        raise SteeringTransferError(
            f"reading={reading!r} is not supported; use 'difference' or 'direct'"
        )
    if not isinstance(target_model_id, str) or not target_model_id:
        raise SteeringTransferError("target_model_id must be a non-empty string")
    if isinstance(target_layer, bool) or not isinstance(target_layer, int) or target_layer < 0:
        raise SteeringTransferError(
            f"target_layer must be a non-negative int, got {target_layer!r}; resolve negative "
            "indices with target_handle.layer(i)"
        )
    if source_vector is not None:
        if not isinstance(source_vector, SteeringVector):
            raise SteeringTransferError(
                f"source_vector must be a SteeringVector, got {type(source_vector).__name__}"
            )
        if source_vector.hidden_size != mapper.source_dim:
            raise SteeringTransferError(
                f"source_vector has width {source_vector.hidden_size} but the mapper expects "
                f"source width {mapper.source_dim}; it was extracted from a different model "
                "than the mapper's source (or the mapper's direction is reversed)"
            )
    for name, acts in (("positive_acts", positive_acts), ("negative_acts", negative_acts)):
        if acts is not None:
            check_matrix(acts, param=name, dim=mapper.source_dim)
            check_finite(acts, param=name)

    meta: dict[str, MetadataValue] = {
        "mapper": mapper.name or type(mapper).__name__,
        "reading": reading,
    }
    if source_vector is not None:
        meta.update(
            {
                "source_model_id": source_vector.model_id,
                "source_layer": source_vector.layer,
                "source_method": source_vector.method,
            }
        )

    was_training = mapper.training
    mapper.eval()  # dropout etc. off: the vector must be deterministic
    try:
        if reading == "difference":
            if positive_acts is None or negative_acts is None:
                raise SteeringTransferError(
                    "reading='difference' needs positive_acts and negative_acts (per-example "
                    "source activations from contrastive_activations); or use reading='direct' "
                    "with source_vector"
                )
            mapped = _map_rows(mapper, positive_acts.float()).mean(dim=0) - _map_rows(
                mapper, negative_acts.float()
            ).mean(dim=0)
            meta.update(
                {"n_positive": positive_acts.shape[0], "n_negative": negative_acts.shape[0]}
            )
        else:
            if source_vector is None:
                raise SteeringTransferError(
                    "reading='direct' needs source_vector; or use reading='difference' with "
                    "positive_acts and negative_acts"
                )
            v = source_vector.vector.detach().to("cpu", torch.float32)
            both = _map_rows(mapper, torch.stack([v, torch.zeros_like(v)]))
            mapped = both[0] - both[1]
    finally:
        mapper.train(was_training)
    if mapped.shape != (mapper.target_dim,):
        raise SteeringTransferError(
            f"mapper returned shape {tuple(mapped.shape)}, expected ({mapper.target_dim},)"
        )
    return SteeringVector(
        vector=mapped.float(),
        model_id=target_model_id,
        layer=target_layer,
        method=f"mapped:{reading}",
        metadata=meta,
    )
