"""``MentorMixLossFunction``: the mixed soft-label cross-entropy (SPEC §1.8-9) as an autograd.Function.

    loss = MentorMixLossFunction.apply(logits, target, partner, lam, weights)

``logits`` [B, K] (fp16/bf16/fp32/fp64), ``target`` [B] int64, ``partner`` [B] int64 (indices into
the batch), ``lam`` [B] float, ``weights`` [B] float or None (constants, e.g. the second-reweighting
weights v2). Forward: ``m_i = lse(z_i) - lam_i z_i[y_i] - (1 - lam_i) z_i[y_{j_i}]`` and
``L = sum_i(w_i m_i) / B`` returned in fp32 (fp64 for fp64 logits). Backward:
``dL/dz_i = g * w_i / B * (softmax(z_i) - y~_i)``, written in the logits' dtype.

This plain-PyTorch version saves the per-row logsumexp in the forward and reads the logits once
more in the backward (the flash-attention pattern); the fused kernels follow the same contract.
For CUDA fp16/bf16/fp32 logits, when the Triton backend is available, forward and backward run its
kernels (``mentormix_fast::triton_mixed_ce`` / ``triton_mixed_loss_backward``) instead.
"""

from __future__ import annotations

import torch

from . import reference, validation


def _triton_ops(logits):
    """The Triton ops when they apply to ``logits`` (CUDA, fp16/bf16/fp32), else None."""
    if logits.device.type != "cuda" or logits.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return None
    from .backends import backends

    return torch.ops.mentormix_fast if backends().get("triton") == "available" else None


class MentorMixLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, partner, lam, weights=None):
        validation.check_logits(logits)
        batch, device = logits.shape[0], logits.device
        validation.check_per_example(target, batch, device, "target", integer=True)
        validation.check_per_example(partner, batch, device, "partner", integer=True)
        validation.check_per_example(lam, batch, device, "lam")
        if weights is not None:
            validation.check_per_example(weights, batch, device, "weights")
        ops = _triton_ops(logits)
        ctx.triton = ops is not None
        if ops is not None:
            m, lse = ops.triton_mixed_ce(logits, target.to(torch.int64), partner.to(torch.int64), lam.float())
            ctx.save_for_backward(logits, target, partner, lam, lse, weights)
            return reference.weighted_mean(m, weights)
        z = logits.to(reference._compute_dtype(logits.dtype))
        lse = torch.logsumexp(z, dim=1)
        m = reference.mixed_ce(z, target, partner, lam)
        ctx.save_for_backward(logits, target, partner, lam, lse, weights)
        return reference.weighted_mean(m, weights)

    @staticmethod
    def backward(ctx, grad_output):
        logits, target, partner, lam, lse, weights = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0] and ctx.triton:
            w = lse.new_empty(0) if weights is None else weights.float()
            grad = torch.ops.mentormix_fast.triton_mixed_loss_backward(
                grad_output.float(), logits, target.to(torch.int64), partner.to(torch.int64), lam.float(), lse, w,
                False)
        elif ctx.needs_input_grad[0]:
            z = logits.to(lse.dtype)
            y = reference.soft_targets(target, partner, lam.to(z.dtype), z.shape[1])
            scale = grad_output.to(z.dtype) / z.shape[0]
            row = scale if weights is None else scale * weights.to(z.dtype)
            row = row.expand(z.shape[0]) if row.dim() == 0 else row
            grad = ((torch.exp(z - lse.unsqueeze(1)) - y) * row.unsqueeze(1)).to(logits.dtype)
        return grad, None, None, None, None
