"""Root conftest: the project's zoo file, fixed threads and seeds (bitwise-reproducible runs)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from steering_transfer.organisms import set_default_zoo

# the installed library has no repository-relative defaults: the project names its own zoo
set_default_zoo(Path(__file__).resolve().parent / "fixtures" / "zoo.toml")
torch.set_num_threads(int(os.environ.get("STEERING_TRANSFER_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _reproducibility() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
