"""Triton kernels of mentormix-fast, installed as ``mentormix_fast.kernels``."""
