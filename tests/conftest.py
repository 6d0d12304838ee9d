"""Test setup shared by every suite.

Without a CUDA device the Triton backend runs on CPU tensors in Triton's interpreter, which must
be switched on before any ``@triton.jit`` decorator runs, i.e. before anything imports
``mentormix_fast.kernels``; conftest.py is imported by pytest before the test modules.

The ``case`` fixture (``fast_case``: without the reference) runs a test on every backend this
machine has, each on its device (tests/ops/cases.py).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    # The interpreter evaluates masked-off lanes too (log(0), inf - inf): numpy warns, results are unaffected.
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")


def pytest_generate_tests(metafunc):
    from tests.ops.cases import cases, fast_cases

    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", cases())
    elif "fast_case" in metafunc.fixturenames:
        metafunc.parametrize("fast_case", fast_cases())


@pytest.fixture
def many_programs(monkeypatch):
    """Forces the Triton kernels' many-program O(B) path on small batches."""
    from mentormix_fast.kernels import _select, mixed_loss, plan

    for module in (plan, mixed_loss):
        monkeypatch.setattr(module, "SMALL_B_MAX", 16)
        monkeypatch.setattr(module, "LARGE_BLOCK", 256)  # >= the 256 histogram bins (GPU lowering)
    monkeypatch.setattr(_select, "LARGE_BLOCK", 256)
