"""Triton kernels of mentormix-fast, installed as ``mentormix_fast.kernels``.

Importing the package registers the ops ``torch.ops.mentormix_triton.{ce, plan, mix, mixed_loss,
mixed_loss_backward}`` (SPEC §5), one file per op with its kernels, launcher and registration.
Private modules hold the shared ``@triton.jit`` pieces: ``_rows`` (row cross-entropy), ``_select``
(radix select), ``_weights`` (epoch and weights), ``_draws`` (Philox draws), ``_library``
(registration and launching), ``_checks`` (argument metadata). ``aot_check`` compiles every kernel
variant the launchers launch for a GPU target without a GPU. Importing this package needs Triton.
"""

from . import ce, mix, mixed_loss, plan

__all__ = ["ce", "mix", "mixed_loss", "plan"]
