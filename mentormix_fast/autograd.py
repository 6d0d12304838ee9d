"""The autograd formulas of the ops: :class:`MentorMixLossFunction` for the mixed loss (SPEC §1.8-1.9)
and :func:`register_mix_autograd` for the input mix (SPEC §1.7), shared by every backend.

    loss = MentorMixLossFunction.apply(logits, target, partner, lam, weights=None)

``logits`` [B, K] (fp16/bf16/fp32/fp64), ``target`` [B] integer labels, ``partner`` [B] integer
indices into the batch, ``lam`` [B] float, ``weights`` [B] float or None (constants). Forward:
``m_i = lse(z_i) - lam_i z_i[y_i] - (1 - lam_i) z_i[y_{j_i}]`` and ``L = sum_i(w_i m_i) / B``,
returned in fp32 (fp64 for fp64 logits). Backward: ``dL/dz_i = g w_i / B (softmax(z_i) - y~_i)``,
in the logits' dtype, from the per-row logsumexp the forward saved (one more read of the logits).

Both directions are the backend's ops ``mixed_loss`` / ``mixed_loss_backward`` (SPEC §5), chosen by
``mentormix_fast.dispatch`` for the logits' device and dtype. :class:`mentormix_fast.MentorMix`
runs the same Function with a :class:`MixedLossState` (its backend, buffers and step), which adds
the second reweighting and the state updates; torch.library takes no autograd formula for an op
that updates its arguments in place, so the formula lives here rather than on the op.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import validation


class MixedLossState(NamedTuple):
    """What :class:`mentormix_fast.MentorMix` adds to a mixed-loss call: the backend
    (``mentormix_fast.dispatch.Backend``), the state buffers the op updates in place, and the
    arguments of the second reweighting (SPEC §5 ``mixed_loss``)."""

    backend: object
    loss_ma_mixed: torch.Tensor
    num_steps: torch.Tensor
    mentornet: object
    step: object
    pool: torch.Tensor | None
    total_steps: int
    percentile: float
    decay: float
    burn_in_epoch: int
    second_reweight: bool


class MentorMixLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, partner, lam, weights=None, state=None):
        if state is None:  # the public, stateless form: check the arguments by name
            validation.check_logits(logits)
            batch, device = logits.shape[0], logits.device
            validation.check_per_example(target, batch, device, "target", integer=True)
            validation.check_per_example(partner, batch, device, "partner", integer=True)
            validation.check_per_example(lam, batch, device, "lam")
            if weights is not None:
                validation.check_per_example(weights, batch, device, "weights")
            from .dispatch import choose

            backend = choose("auto", device, logits.dtype)
            step = torch.zeros((), dtype=torch.int64)
            args = (None, None, None if backend.reference else _no_mentornet(device), step, None, 1, 0.5, 0.5, 0,
                    False)
        else:
            backend = state.backend
            args = (state.loss_ma_mixed, state.num_steps, state.mentornet, state.step, state.pool,
                    state.total_steps, state.percentile, state.decay, state.burn_in_epoch, state.second_reweight)
        compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
        target, partner, lam = target.to(torch.int64), partner.to(torch.int64), lam.to(compute)
        given = None if weights is None else weights.detach().to(compute)
        loss, lse, v2 = backend.ops.mixed_loss(logits.detach(), target, partner, lam, given, *args)
        ctx.save_for_backward(logits, target, partner, lam, lse, v2 if args[-1] else given)
        ctx.backend = backend
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, target, partner, lam, lse, weights = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0]:
            grad = ctx.backend.ops.mixed_loss_backward(grad_loss.detach().to(lse.dtype).reshape(()), logits.detach(),
                                                       target, partner, lam, lse, weights)
        return grad, None, None, None, None, None


def _no_mentornet(device) -> torch.Tensor:
    return torch.empty(0, dtype=torch.float32, device=device)


def _mix_setup_context(ctx, inputs, output):
    _, partner, lam = inputs
    ctx.save_for_backward(partner, lam)


def _mix_backward(ctx, grad):
    """``d x~_i / d x_i = lam_i`` and ``d x~_i / d x_{j_i} = 1 - lam_i`` (a scatter-add over the
    partners); a partner out of range contributes nothing."""
    partner, lam = ctx.saved_tensors
    shape = (-1,) + (1,) * (grad.dim() - 1)
    lam_b = lam.to(grad.dtype).reshape(shape)
    ok = (partner >= 0) & (partner < grad.shape[0])
    other = torch.where(ok.reshape(shape), (1.0 - lam_b) * grad, torch.zeros_like(grad))
    return (lam_b * grad).index_add(0, torch.where(ok, partner, torch.zeros_like(partner)), other), None, None


def register_mix_autograd(op) -> None:
    """Give a backend's ``mix`` op its gradient with respect to ``x``."""
    torch.library.register_autograd(op, _mix_backward, setup_context=_mix_setup_context)
