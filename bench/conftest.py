"""Benchmarks without a GPU run the Triton backend in its interpreter (correctness of the harness
only; its timings mean nothing). Must be set before the kernels are imported."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
