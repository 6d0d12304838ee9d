"""The ``"triton"`` backend: fused Triton kernels (``mentormix_fast.kernels``) as torch.library ops.

Ops (namespace ``mentormix_fast``), each with a fake (meta) implementation so that
``torch.compile(fullgraph=True)`` traces a whole step and a CUDA graph can capture it. The state
arguments marked ``!`` are updated in place (declared in ``mutates_args``):

* ``triton_weights_and_sample(logits, target, loss_ma!, rng!, params, uniform, beta, percentile,
  decay, weighting_mode, mix, alpha, clock, clock_mul, clock_div) -> (loss, v, partner, lam)``:
  steps 2-6;
* ``triton_mix(x, partner, lam) -> x~``: step 7 (differentiable in x);
* ``triton_mixed_loss(logits, target, partner, lam, loss_ma_mixed!, steps_out!, params, percentile,
  decay, weighting_mode, second_reweight, clock, clock_mul, clock_div, step_next) -> (loss, lse,
  v2)``: steps 8-9; :class:`_MixedLoss` makes it differentiable in logits through
  ``triton_mixed_loss_backward`` (torch.library takes no autograd formula for a mutating op);
* for ``percentile_gather`` (the percentile over e.g. the all-gathered batch), the same steps split
  where the user's gather runs: ``triton_ce``, ``triton_plan(values, pool, loss_ma!, rng!, ...)``
  and ``triton_mixed_ce`` (differentiable; same one-read forward, one-read-one-write backward).

Two APIs (``backends.py``): the functional one (new state returned) passes copies of the state;
the in-place one (``weights_and_sample_``/``mixed_loss_``, used by :class:`MentorMix`) passes the
module's buffers, so a whole step at small B is the four kernel launches plan, mix, mixed-loss
forward, backward, with no torch launch for seeds, copies or the epoch.

Randomness: the kernels draw ``b ~ Beta(alpha, alpha)`` (Marsaglia-Tsang gamma draws) and
``u ~ U[0, 1)`` per example from Philox with the state ``rng`` = (key, step counter), int64 [2] on
the device, and advance the counter in place. The module's ``rng_state`` buffer is keyed by its
generator's seed; the functional API draws a fresh ``rng`` from the generator per call (one
``torch.randint``). Same seed, same steps (and the same draws whatever the batch layout), but NOT
the reference backend's stream: the two backends agree in distribution, not draw for draw (like the
C++ backend). Explicit ``uniform``/``beta`` arguments are still used as given (tests compare with
the reference on identical draws); when only one of them is given the other is drawn with torch, in
the reference's order.

Epoch: the weighting (threshold or a MentorNet) is folded on the device, with torch ops and no host
sync, into a per-epoch table of small fp32 vectors (cached); a step passes row ``e`` as ``params``
for a Python int, or the whole table plus a ``clock`` tensor (an epoch, or the module's step with
``clock_mul = 100``, ``clock_div = T``), whose row the kernels compute and read (layout in
``kernels/_shared.py``).

Devices: CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1`` (Triton's interpreter, for
tests), where ``"auto"`` never picks it. float64 logits fall back to the reference (the mix kernel
takes float64 inputs).
"""

from __future__ import annotations

import weakref

import torch

from . import reference
from .backends import (
    ReferenceBackend,
    StepState,
    mark_unavailable,
    register_backend,
    step_mixed_loss,
    step_weights_and_sample,
)
from .config import MentorMixConfig

try:
    from .kernels import _shared
    from .kernels import mix as _mix_k
    from .kernels import mixed_loss as _loss_k
    from .kernels import weights_and_sample as _ws_k
except Exception as exc:  # no triton, or a triton that cannot load: the package still imports
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"
else:
    _IMPORT_ERROR = None

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# ----------------------------------------------------------------------------------------------
# Folding the weighting into a parameter vector (torch ops on the device, no sync)
# ----------------------------------------------------------------------------------------------


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_THRESHOLD_TABLES: dict = {}


def fold_table(weighting, burn_in_epoch: int, device) -> tuple[torch.Tensor, int]:
    """``(table [100, 93] f32, mode)``: row e is the kernel parameter vector for epoch feature e.

    Per step the label is 0 and the epoch is shared, so the first FC layer's input from the two
    embeddings plus its bias is one [20] vector ``base_e = E_l[0] W1[0:2] + E_e[e] W1[2:7] + b1``;
    the LSTM cell states need only kernel rows 0-1 and gate columns i, j; the burn-in flag is
    ``e < burn_in_epoch - 1``. All of it depends on e alone, so the 100 rows are folded once (torch
    ops on the device) and cached per MentorNet, refreshed when a parameter changes (its version
    or storage), e.g. while the MentorNet itself is trained. ``mode`` 0: threshold, 1: MentorNet.
    """
    device = torch.device(device)
    if isinstance(weighting, str):
        if weighting != "threshold":
            raise ValueError(f"weighting: expected 'threshold' or a MentorNet, got {weighting!r}")
        key = (burn_in_epoch, device)
        if torch.compiler.is_compiling():
            return _build_table(None, burn_in_epoch, device), _shared.MODE_THRESHOLD
        if key not in _THRESHOLD_TABLES:
            _THRESHOLD_TABLES[key] = _build_table(None, burn_in_epoch, device)
        return _THRESHOLD_TABLES[key], _shared.MODE_THRESHOLD
    if torch.compiler.is_compiling():  # traced into the graph (inductor fuses it); no Python cache
        return _build_table(weighting, burn_in_epoch, device), _shared.MODE_MENTORNET
    params = list(weighting.parameters())
    key = (burn_in_epoch, device, tuple((p._version, p.data_ptr(), p.device) for p in params))
    cached = _TABLES.get(weighting)
    if cached is None or cached[0] != key:
        cached = (key, _build_table(weighting, burn_in_epoch, device))
        _TABLES[weighting] = cached
    return cached[1], _shared.MODE_MENTORNET


def _build_table(net, burn_in_epoch: int, device) -> torch.Tensor:
    epochs = torch.arange(100, device=device)
    burn = (epochs < burn_in_epoch - 1).to(torch.float32).unsqueeze(1)
    if net is None:
        return torch.cat([burn, torch.zeros(100, _shared.PARAMS_SIZE - 1, device=device)], dim=1)
    with torch.no_grad():
        w1 = net.fc1_weight
        emb = net.epoch_embedding
        if emb.shape[0] < 100:  # the release's table has 100 rows; larger epochs clamp to the last
            emb = emb[epochs.clamp_max(emb.shape[0] - 1)]
        base = (net.label_embedding[0] @ w1[0:2] + net.fc1_bias) + emb[:100] @ w1[2:7]

        def gates(kernel, bias):
            return torch.stack([kernel[0, 0], kernel[1, 0], bias[0], kernel[0, 1], kernel[1, 1], bias[1]])

        shared = torch.cat([gates(net.lstm_fw_kernel, net.lstm_fw_bias), gates(net.lstm_bw_kernel, net.lstm_bw_bias)])
        tail = torch.cat([w1[7], w1[8], net.fc2_weight[:, 0] + net.fc2_bias])
        parts = [burn, shared.expand(100, -1), base, tail.expand(100, -1)]
        return torch.cat([p.to(device=device, dtype=torch.float32) for p in parts], dim=1).contiguous()


def fold_weighting(weighting, epoch, burn_in_epoch: int, device) -> tuple[torch.Tensor, int]:
    """``(params [93] f32, mode)`` for this step: row ``epoch`` of :func:`fold_table` (a view for a
    Python int; one gather on the device, no sync, for an epoch tensor). ``epoch`` is the epoch
    feature, in 0..99 (values outside are clamped)."""
    table, mode = fold_table(weighting, burn_in_epoch, device)
    if isinstance(epoch, torch.Tensor):
        e = epoch.to(device=table.device, dtype=torch.int64).reshape(1).clamp(0, 99)
        return table.index_select(0, e).reshape(-1), mode
    return table[max(0, min(int(epoch), 99))], mode


def _step_params(weighting, epoch, burn_in_epoch: int, device, clock_mul: int = 1, clock_div: int = 1):
    """``(params, mode, clock, clock_mul, clock_div)`` for the ops. A Python int ``epoch`` (the epoch
    feature): its table row (a view), no clock. A tensor: the whole [100, 93] table, and the tensor
    as one int64 element on the device, the clock from which the kernels read row
    ``clamp(clock * clock_mul // clock_div, 0, 99)`` (no clamp/gather launches): an epoch tensor
    (1, 1) or the step t (100, T)."""
    if isinstance(epoch, torch.Tensor):
        table, mode = fold_table(weighting, burn_in_epoch, device)
        return table, mode, epoch.to(device=table.device).reshape(1), clock_mul, clock_div
    params, mode = fold_weighting(weighting, epoch, burn_in_epoch, device)
    return params, mode, None, 1, 1


# ----------------------------------------------------------------------------------------------
# torch.library ops
# ----------------------------------------------------------------------------------------------


def _register_ops() -> None:
    lib = "mentormix_fast"

    # The step ops update their state arguments in place (declared in mutates_args): the moving
    # average, the Philox step counter, the module's step counter. The module passes its buffers,
    # so a step needs no copy launches; the functional backend API passes fresh copies.

    @torch.library.custom_op(f"{lib}::triton_weights_and_sample", mutates_args=("loss_ma", "rng"))
    def weights_and_sample_op(logits: torch.Tensor, target: torch.Tensor, loss_ma: torch.Tensor,
                              rng: torch.Tensor | None, params: torch.Tensor, uniform: torch.Tensor,
                              beta: torch.Tensor, percentile: float, decay: float, weighting_mode: int, mix: bool,
                              alpha: float = 0.0, clock: torch.Tensor | None = None, clock_mul: int = 1,
                              clock_div: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        rank = reference.percentile_rank(logits.shape[0], percentile)
        return _ws_k.weights_and_sample(logits, target.contiguous(), loss_ma, params, uniform.contiguous(),
                                        beta.contiguous(), rank=rank, decay=decay, mode=weighting_mode, mix=mix, rng=rng,
                                        alpha=alpha, clock=clock, clock_mul=clock_mul, clock_div=clock_div)

    @weights_and_sample_op.register_fake
    def _(logits, target, loss_ma, rng, params, uniform, beta, percentile, decay, weighting_mode, mix, alpha=0.0, clock=None,
          clock_mul=1, clock_div=1):
        b = logits.shape[0]
        f = dict(dtype=torch.float32, device=logits.device)
        return (logits.new_empty(b, **f), logits.new_empty(b, **f),
                logits.new_empty(b, dtype=torch.int64, device=logits.device), logits.new_empty(b, **f))

    @torch.library.custom_op(f"{lib}::triton_mix", mutates_args=())
    def mix_op(x: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        return _mix_k.mix(x, partner.contiguous(), lam.contiguous())

    @mix_op.register_fake
    def _(x, partner, lam):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    def mix_setup(ctx, inputs, output):
        _, partner, lam = inputs
        ctx.save_for_backward(partner, lam)

    def mix_backward(ctx, grad):
        # d x~_i / d x_i = lam_i, d x~_i / d x_{j_i} = 1 - lam_i (scatter-add over the partners).
        partner, lam = ctx.saved_tensors
        shape = (-1,) + (1,) * (grad.dim() - 1)
        lam_b = lam.to(grad.dtype).reshape(shape)
        gx = (lam_b * grad).index_add(0, partner, (1.0 - lam_b) * grad)
        return gx, None, None

    mix_op.register_autograd(mix_backward, setup_context=mix_setup)

    @torch.library.custom_op(f"{lib}::triton_mixed_loss", mutates_args=("loss_ma_mixed", "steps_out"))
    def mixed_loss_op(logits: torch.Tensor, target: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor,
                      loss_ma_mixed: torch.Tensor, steps_out: torch.Tensor | None, params: torch.Tensor,
                      percentile: float, decay: float, weighting_mode: int, second_reweight: bool,
                      clock: torch.Tensor | None = None, clock_mul: int = 1, clock_div: int = 1, step_next: int = 0
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rank = reference.percentile_rank(logits.shape[0], percentile)
        return _loss_k.mixed_loss_forward(logits, target.contiguous(), partner.contiguous(), lam.contiguous(),
                                          loss_ma_mixed, params, rank=rank, decay=decay, mode=weighting_mode,
                                          second_reweight=second_reweight, clock=clock, clock_mul=clock_mul,
                                          clock_div=clock_div, steps_out=steps_out, step_next=step_next)

    @mixed_loss_op.register_fake
    def _(logits, target, partner, lam, loss_ma_mixed, steps_out, params, percentile, decay, weighting_mode, second_reweight,
          clock=None, clock_mul=1, clock_div=1, step_next=0):
        b = logits.shape[0]
        f = dict(dtype=torch.float32, device=logits.device)
        return logits.new_empty((), **f), logits.new_empty(b, **f), logits.new_empty(b if second_reweight else 0, **f)

    @torch.library.custom_op(f"{lib}::triton_mixed_loss_backward", mutates_args=())
    def mixed_loss_backward_op(grad_output: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                               partner: torch.Tensor, lam: torch.Tensor, lse: torch.Tensor, weights: torch.Tensor,
                               per_row: bool = False) -> torch.Tensor:
        return _loss_k.mixed_loss_backward(grad_output, logits, target.contiguous(), partner.contiguous(),
                                           lam.contiguous(), lse, weights.contiguous(), per_row=per_row)

    @mixed_loss_backward_op.register_fake
    def _(grad_output, logits, target, partner, lam, lse, weights, per_row=False):
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    # Split ops for a percentile over other values than the local batch (percentile_gather).
    @torch.library.custom_op(f"{lib}::triton_ce", mutates_args=())
    def ce_op(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _ws_k.per_sample_ce(logits, target.contiguous())

    @ce_op.register_fake
    def _(logits, target):
        return logits.new_empty(logits.shape[0], dtype=torch.float32)

    @torch.library.custom_op(f"{lib}::triton_plan", mutates_args=("loss_ma", "rng"))
    def plan_op(values: torch.Tensor, pool: torch.Tensor, loss_ma: torch.Tensor, rng: torch.Tensor | None,
                params: torch.Tensor, uniform: torch.Tensor, beta: torch.Tensor, percentile: float, decay: float,
                weighting_mode: int, mix: bool, alpha: float = 0.0, clock: torch.Tensor | None = None, clock_mul: int = 1,
                clock_div: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rank = reference.percentile_rank(pool.shape[0], percentile)
        return _ws_k.plan(values.contiguous(), pool.contiguous(), loss_ma, params, uniform.contiguous(),
                          beta.contiguous(), rank=rank, decay=decay, mode=weighting_mode, mix=mix, rng=rng, alpha=alpha,
                          clock=clock, clock_mul=clock_mul, clock_div=clock_div)

    @plan_op.register_fake
    def _(values, pool, loss_ma, rng, params, uniform, beta, percentile, decay, weighting_mode, mix, alpha=0.0, clock=None,
          clock_mul=1, clock_div=1):
        b = values.shape[0]
        return values.new_empty(b), values.new_empty(b, dtype=torch.int64), values.new_empty(b)

    @torch.library.custom_op(f"{lib}::triton_mixed_ce", mutates_args=())
    def mixed_ce_op(logits: torch.Tensor, target: torch.Tensor, partner: torch.Tensor, lam: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        return _loss_k.mixed_ce(logits, target.contiguous(), partner.contiguous(), lam.contiguous())

    @mixed_ce_op.register_fake
    def _(logits, target, partner, lam):
        b = logits.shape[0]
        return logits.new_empty(b, dtype=torch.float32), logits.new_empty(b, dtype=torch.float32)

    def mixed_ce_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs, output[1])
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)

    def mixed_ce_backward(ctx, grad_m, grad_lse):
        logits, target, partner, lam, lse = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0] and grad_m is not None:
            one = torch.ones((), dtype=torch.float32, device=logits.device)
            grad = torch.ops.mentormix_fast.triton_mixed_loss_backward(one, logits, target, partner, lam, lse,
                                                                       grad_m.float(), True)
        return grad, None, None, None

    mixed_ce_op.register_autograd(mixed_ce_backward, setup_context=mixed_ce_setup)


class _MixedLoss(torch.autograd.Function):
    """The differentiable mixed loss around ``triton_mixed_loss``: torch.library refuses an autograd
    formula on an op that mutates its inputs (the state), so the formula lives here; Dynamo traces
    it whole. Forward: one read of the logits; backward: ``triton_mixed_loss_backward``."""

    @staticmethod
    def forward(ctx, logits, target, partner, lam, loss_ma_mixed, steps_out, params, percentile, decay, mode,
                second_reweight, clock, clock_mul, clock_div, step_next):
        loss, lse, w = torch.ops.mentormix_fast.triton_mixed_loss(
            logits, target, partner, lam, loss_ma_mixed, steps_out, params, percentile, decay, mode, second_reweight,
            clock, clock_mul, clock_div, step_next)
        ctx.save_for_backward(logits, target, partner, lam, lse, w)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        logits, target, partner, lam, lse, w = ctx.saved_tensors
        grad = None
        if ctx.needs_input_grad[0]:
            grad = torch.ops.mentormix_fast.triton_mixed_loss_backward(grad_loss, logits, target, partner, lam, lse, w)
        return (grad,) + (None,) * 14


# ----------------------------------------------------------------------------------------------
# The backend object
# ----------------------------------------------------------------------------------------------


class TritonBackend:
    """Fused Triton kernels; CUDA tensors (and CPU tensors under ``TRITON_INTERPRET=1``)."""

    name = "triton"
    supports_percentile_gather = True
    updates_state_in_place = True

    def __init__(self):
        self._reference = ReferenceBackend()

    def supports(self, device: torch.device) -> bool:
        device = torch.device(device)
        return device.type == "cuda" or (device.type == "cpu" and _shared.interpreting())

    def preferred_for(self, device: torch.device) -> bool:
        return torch.device(device).type == "cuda"

    # -- the functional API (backends.py): new state returned, inputs untouched --------------------

    def weights_and_sample(self, logits, target, loss_ma, epoch, config: MentorMixConfig, weighting, generator,
                           uniform=None, beta=None, percentile_gather=None):
        if logits.dtype not in _KERNEL_DTYPES:
            return self._reference.weights_and_sample(logits, target, loss_ma, epoch, config, weighting, generator,
                                                      uniform, beta, percentile_gather=percentile_gather)
        rng = None
        if config.mixup_alpha > 0 and uniform is None and beta is None:
            # A fresh Philox key and counter from the generator (one launch, no host sync).
            rng = torch.randint(0, 2**62, (2,), generator=generator, device=logits.device, dtype=torch.int64)
        new_ma = loss_ma.detach().to(torch.float32, copy=True)  # the ops update it in place
        loss, v, partner, lam = self._plan(logits, target, new_ma, rng, epoch, 1, 1, config, weighting, generator,
                                           uniform, beta, percentile_gather)
        return reference.WeightsAndSample(loss, v, partner, lam, new_ma)

    def mix(self, x, partner, lam):
        if x.dtype not in _KERNEL_DTYPES + (torch.float64,):
            return self._reference.mix(x, partner, lam)
        return torch.ops.mentormix_fast.triton_mix(x, partner.to(torch.int64), lam)

    def mixed_loss(self, logits, target, partner, lam, loss_ma_mixed, epoch, config: MentorMixConfig, weighting,
                   percentile_gather=None):
        if logits.dtype not in _KERNEL_DTYPES:
            return self._reference.mixed_loss(logits, target, partner, lam, loss_ma_mixed, epoch, config, weighting,
                                              percentile_gather=percentile_gather)
        new_ma = loss_ma_mixed.detach().to(torch.float32, copy=True)
        loss = self._mixed_loss(logits, target, partner, lam, new_ma, None, epoch, 1, 1, 0, config, weighting,
                                percentile_gather)
        return loss, new_ma

    # -- the in-place API (backends.py, ``updates_state_in_place``): the module's buffers ----------

    def weights_and_sample_(self, logits, target, state: StepState, step, config: MentorMixConfig, weighting,
                            generator=None):
        if logits.dtype not in _KERNEL_DTYPES:
            return step_weights_and_sample(self._reference, logits, target, state, step, config, weighting, generator)
        rng = state.rng if config.mixup_alpha > 0 else None
        epoch = step if isinstance(step, torch.Tensor) else reference.epoch_feature(step, config.total_steps)
        return self._plan(logits, target, state.loss_ma, rng, epoch, 100, config.total_steps, config, weighting,
                          generator, None, None, None)

    def mixed_loss_(self, logits, target, partner, lam, state: StepState, step, config: MentorMixConfig, weighting):
        if logits.dtype not in _KERNEL_DTYPES:
            return step_mixed_loss(self._reference, logits, target, partner, lam, state, step, config, weighting)
        tensor_step = isinstance(step, torch.Tensor)
        epoch = step if tensor_step else reference.epoch_feature(step, config.total_steps)
        return self._mixed_loss(logits, target, partner, lam, state.loss_ma_mixed, state.num_steps, epoch, 100,
                                config.total_steps, 0 if tensor_step else step + 1, config, weighting, None)

    # -- shared by both ---------------------------------------------------------------------------

    def _plan(self, logits, target, loss_ma, rng, epoch, clock_mul, clock_div, config, weighting, generator, uniform,
              beta, percentile_gather):
        """Steps 2-6 with ``loss_ma`` updated in place; ``rng`` (Philox key, counter) for in-kernel
        draws (advanced in place), else explicit or torch-drawn ``uniform``/``beta``."""
        batch, device = logits.shape[0], logits.device
        mix = config.mixup_alpha > 0
        if rng is None and mix:
            # Explicit draws (one of them may be missing: drawn as the reference backend does).
            uniform = reference.draw_uniform(batch, generator, device) if uniform is None else uniform
            beta = reference.draw_beta(config.mixup_alpha, batch, generator, device) if beta is None else beta
            uniform, beta = uniform.to(torch.float64), beta.to(torch.float32)
        else:
            uniform = beta = torch.empty(0, dtype=torch.float32, device=device)
        alpha = float(config.mixup_alpha)
        params, mode, clock, mul, div = _step_params(weighting, epoch, config.burn_in_epoch, device, clock_mul,
                                                     clock_div)
        target = target.to(torch.int64)
        if percentile_gather is not None:
            # The percentile of other values than the local losses (e.g. all-gathered): split the step.
            loss = torch.ops.mentormix_fast.triton_ce(logits, target)
            pool = percentile_gather(loss).to(torch.float32)
            v, partner, lam = torch.ops.mentormix_fast.triton_plan(
                loss, pool, loss_ma, rng, params, uniform, beta, config.percentile, config.loss_ma_decay, mode, mix,
                alpha, clock, mul, div)
            return loss, v, partner, lam
        return torch.ops.mentormix_fast.triton_weights_and_sample(
            logits, target, loss_ma, rng, params, uniform, beta, config.percentile, config.loss_ma_decay, mode, mix,
            alpha, clock, mul, div)

    def _mixed_loss(self, logits, target, partner, lam, loss_ma_mixed, steps_out, epoch, clock_mul, clock_div,
                    step_next, config, weighting, percentile_gather):
        """Steps 8-9, the loss differentiable in ``logits``; ``loss_ma_mixed`` (and ``steps_out``)
        updated in place."""
        params, mode, clock, mul, div = _step_params(weighting, epoch, config.burn_in_epoch, logits.device, clock_mul,
                                                     clock_div)
        target, partner, lam = target.to(torch.int64), partner.to(torch.int64), lam.to(torch.float32)
        if percentile_gather is not None and config.second_reweight:
            m, _ = torch.ops.mentormix_fast.triton_mixed_ce(logits, target, partner, lam)
            md = m.detach()
            empty = md.new_empty(0)
            v2, _, _ = torch.ops.mentormix_fast.triton_plan(
                md, percentile_gather(md).to(torch.float32), loss_ma_mixed, None, params, empty, empty,
                config.percentile, config.loss_ma_decay, mode, False, 0.0, clock, mul, div)
            return (v2 * m).sum() / m.shape[0]
        return _MixedLoss.apply(logits, target, partner, lam, loss_ma_mixed, steps_out, params, config.percentile,
                                config.loss_ma_decay, mode, config.second_reweight, clock, mul, div, step_next)


if _IMPORT_ERROR is not None:
    mark_unavailable("triton", f"Triton kernels unavailable ({_IMPORT_ERROR})")
else:
    try:
        _register_ops()
    except Exception as exc:
        mark_unavailable("triton", f"registering the Triton ops failed ({type(exc).__name__}: {exc})")
    else:
        register_backend(TritonBackend())
