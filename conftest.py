"""Root conftest: fixed threads and seeds so CPU runs are bitwise reproducible."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

torch.set_num_threads(int(os.environ.get("STEERING_TRANSFER_TEST_THREADS", "2")))


@pytest.fixture(autouse=True)
def _reproducibility() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
