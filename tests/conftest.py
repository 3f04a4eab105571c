import os
import sys
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

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


# what a test's subprocess (kill/resume jobs, second writers) gets: one thread, as one_thread
# gives the test itself; two such processes then fit two cores
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def one_blas_thread():
    """One BLAS/OpenMP thread (numpy, scipy, scikit-learn) for a module of small problems: on two
    shared cores a tiny solve that wakes a second BLAS thread is several times slower (measured:
    scipy's solve_triangular on a 4 x 4 design 0.89 ms with two threads, 0.13 ms with one), and
    a study's associate stage calls thousands of them (24 s -> 10 s, the same tables)."""
    with threadpool_limits(1):
        yield


def one_thread_env() -> dict[str, str]:
    """``os.environ`` for a subprocess that must not use more than one thread."""
    return {**os.environ, **ONE_THREAD_ENV}


ROOT = Path(__file__).resolve().parents[1]
DEMO_COMMAND = "bioviz demo --studies dna_motifs"  # README, "A whole study from one config"


@pytest.fixture(scope="session")
def dna_demo(tmp_path_factory):
    """README's first study command, run once as a user runs it: the installed ``bioviz`` script
    in a fresh folder that has the repository's ``experiments/`` beside it (as the repository
    root has). tests/test_demo.py checks what it prints and writes; tests/test_readme.py goes on
    from it with the README's next commands; tests/test_study_dna.py checks the CTCF study in it."""
    import shlex
    import subprocess
    from types import SimpleNamespace

    cwd = tmp_path_factory.mktemp("readme")
    (cwd / "experiments").symlink_to(ROOT / "experiments")
    script = Path(sys.executable).with_name("bioviz")
    argv = shlex.split(DEMO_COMMAND)
    argv = [str(script), *argv[1:]] if script.is_file() else [sys.executable, "-m", "bioviz.cli", *argv[1:]]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    out = cwd / "bioviz-demo"
    return SimpleNamespace(cwd=cwd, out=out, study=out / "dna_motifs", command=DEMO_COMMAND,
                           stdout=done.stdout, stderr=done.stderr, returncode=done.returncode)
