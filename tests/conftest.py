"""Test setup shared by every suite.

Without a CUDA device the Triton backend runs on CPU tensors in Triton's interpreter, which must
be switched on before any ``@triton.jit`` decorator runs, i.e. before anything imports
``mentormix_fast.kernels``; conftest.py is imported by pytest before the test modules.

The ``case`` fixture (``fast_case``: without the reference) runs a test on every backend this
machine has, each on its device (tests/ops/cases.py).

torch runs one intra-op thread in the tests (and in the programs they start), unless
``MENTORMIX_TEST_THREADS`` says otherwise: the tests' tensors are small, and on a 2-core machine
shared with another job two threads made the suite slower (the README gives both times).
"""

import os

_THREADS = os.environ.get("MENTORMIX_TEST_THREADS", "1")
os.environ["OMP_NUM_THREADS"] = _THREADS

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(_THREADS))
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
