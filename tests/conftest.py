import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/jobs.py: shared small models and datasets


def tree_bytes(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` by relative name, for byte-identity checks."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


@pytest.fixture
def tree():
    return tree_bytes
