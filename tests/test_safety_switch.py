"""The safety switch on tiny random models (mechanics; the real figures come from the bench)."""

from __future__ import annotations

from pathlib import Path

import pytest

from steering_transfer.errors import SteeringTransferError
from steering_transfer.experiments.cell import Side
from steering_transfer.experiments.safety_switch import SafetySwitchConfig, safety_switch
from steering_transfer.models import ModelHandle


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEERING_TRANSFER_CACHE", str(tmp_path))


def test_a_model_switched_to_itself_behaves_as_before(llama: ModelHandle) -> None:
    side = Side(llama, "plain", "llama")
    config = SafetySwitchConfig(layers=[1, -1], n_fit_instructions=24, n_prompts=6,
                                max_new_tokens=4, mapper_kwargs={"ridge": 1e-6})
    result = safety_switch(side, side, config)
    assert [r.layer for r in result.layers] == [1, llama.n_layers - 1]
    for row in result.layers:
        assert row.fvu < 1e-3
        assert row.switched.successes == row.untouched.successes
        assert row.patched.successes == row.untouched.successes
        assert row.untouched.n == 6
    assert result.to_dict()["config"]["layers"] == [1, -1]


def test_switch_needs_matching_sizes_and_layers(
    llama: ModelHandle, llama_wide: ModelHandle
) -> None:
    with pytest.raises(SteeringTransferError, match="equal hidden sizes"):
        safety_switch(Side(llama, "plain", "a"), Side(llama_wide, "plain", "b"),
                      SafetySwitchConfig(layers=[1]))
    with pytest.raises(SteeringTransferError, match="layers is empty"):
        safety_switch(Side(llama, "plain", "a"), Side(llama, "plain", "b"),
                      SafetySwitchConfig(layers=[]))
    with pytest.raises(SteeringTransferError, match="layers"):
        safety_switch(Side(llama, "plain", "a"), Side(llama, "plain", "b"),
                      SafetySwitchConfig(layers=[99], n_fit_instructions=4, n_prompts=2))
