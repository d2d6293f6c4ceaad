import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # so tests can `from helpers import ...`

torch.set_num_threads(1)  # tiny ops on a loaded 2-core machine are faster on one thread


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
