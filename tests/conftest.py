"""Test setup shared by every suite.

Without a CUDA device the Triton backend runs on CPU tensors in Triton's interpreter, which must
be switched on before any ``@triton.jit`` decorator runs, i.e. before anything imports
``mentormix_fast.kernels``; conftest.py is imported by pytest before the test modules.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

def pytest_configure(config):
    # The interpreter evaluates masked-off lanes too (log(0), inf - inf): numpy warns, results are unaffected.
    config.addinivalue_line("filterwarnings", "ignore::RuntimeWarning:triton.runtime.interpreter")
