"""Triton kernels of mentormix-fast, installed as ``mentormix_fast.kernels``.

``weights_and_sample`` (steps 2-6), ``mix`` (step 7), ``mixed_loss`` (steps 8-9, forward and
backward), ``_shared`` (row CE, radix select, weights), ``aot_check`` (compile every variant for a
GPU target without a GPU). The torch.library ops and the backend live in
``mentormix_fast.triton_backend``; importing this package needs Triton.
"""
