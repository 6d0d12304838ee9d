"""The ``mix`` op (SPEC §1.7, contract in SPEC §5): ``x~_i = lam_i x_i + (1 - lam_i) x_{j_i}`` for
x [B, ...], one pass.

x is viewed as [B, D] and walked flat (one read of x, one gather of the partner row, one write),
so tiny D and huge D both fill the grid. The arithmetic rounds to x's dtype after each operation,
exactly like the eager reference ``lam.to(x.dtype) * x + (1 - lam) * x[partner]``, so bf16/fp16
results match it bit for bit (fp32 may differ by one ulp where the compiler fuses a multiply-add);
fp64 inputs compute in fp64. A partner outside [0, B) gives a NaN row and is never read.
"""

import torch
import triton
import triton.language as tl

from ._checks import KERNEL_DTYPES, check_tensor
from ._library import device_of, library_op, wrap_triton


@triton.jit
def _mix_kernel(x_ptr, partner_ptr, lam_ptr, out_ptr, total, B, D, FP64: tl.constexpr, BLOCK: tl.constexpr):
    COMPUTE: tl.constexpr = tl.float64 if FP64 else tl.float32
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < total
    row = offs // D
    col = offs - row * D
    j = tl.load(partner_ptr + row, mask=inb, other=0)
    ok = (j >= 0) & (j < B)
    lam = tl.load(lam_ptr + row, mask=inb, other=1.0).to(x_ptr.dtype.element_ty)
    x = tl.load(x_ptr + offs, mask=inb, other=0.0)
    xp = tl.load(x_ptr + tl.where(ok, j, 0) * D + col, mask=inb & ok, other=0.0)
    a = (lam.to(COMPUTE) * x.to(COMPUTE)).to(x.dtype)
    one_minus = (1.0 - lam.to(COMPUTE)).to(x.dtype)
    b = (one_minus.to(COMPUTE) * xp.to(COMPUTE)).to(x.dtype)
    out = tl.where(ok, (a.to(COMPUTE) + b.to(COMPUTE)), float("nan"))
    tl.store(out_ptr + offs, out.to(x.dtype), mask=inb)


@library_op("mix")
def mix(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam_i x_i + (1 - lam_i) x_{partner_i}``: x [B, ...] fp16/bf16/fp32/fp64, partner [B] int64,
    lam [B] fp32 -> contiguous, x's dtype."""
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"x: expected a non-empty [B, ...] tensor, got shape {tuple(x.shape)}")
    if x.dtype not in KERNEL_DTYPES + (torch.float64,):
        raise TypeError(f"x: dtype must be a float type, got {x.dtype}")
    batch = x.shape[0]
    check_tensor(partner, "partner", (batch,), torch.int64, x.device)
    check_tensor(lam, "lam", (batch,), torch.float32, x.device)
    x = x.contiguous()
    out = torch.empty_like(x)
    total = x.numel()
    if total == 0:
        return out
    block = 1024
    with device_of(x):
        wrap_triton(_mix_kernel)[(triton.cdiv(total, block),)](x, partner, lam, out, total, batch, total // batch,
                                                               FP64=x.dtype == torch.float64, BLOCK=block)
    return out
