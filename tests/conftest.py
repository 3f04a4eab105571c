import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/jobs.py: shared small models and datasets


def tree_bytes(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` by relative name, for byte-identity checks."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


@pytest.fixture
def tree():
    return tree_bytes


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors on two shared cores: one torch thread avoids a handoff per op that costs
    more than the op. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
