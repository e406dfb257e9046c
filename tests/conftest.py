import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# two threads by default (the CI machine's cores); OMP_NUM_THREADS=1 when the cores are busy, since
# oversubscribed OpenMP threads make small ops orders of magnitude slower
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))

# Every modality package registers its guiders, so the guider registry is the same whatever order the
# tests run in (as ``omniguide list`` shows it).
from omniguide.modalities.base import load_families  # noqa: E402

load_families()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)
