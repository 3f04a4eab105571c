"""Fixtures shared by several test modules (conftest.py's ``one_thread`` covers torch only).

A module imports what it uses (``from fixtures_shared import one_blas_thread``) and names it in
``pytestmark = pytest.mark.usefixtures("one_thread", "one_blas_thread")``."""

from __future__ import annotations

import os

import pytest
from threadpoolctl import threadpool_limits

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
