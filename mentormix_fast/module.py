"""The public ``nn.Module``: :class:`MentorMix`, one MentorMix loss with its state."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from . import dispatch, reference, validation
from .autograd import MentorMixLossFunction, MixedLossState
from .batchnorm import frozen_batchnorm_stats
from .config import MentorMixConfig
from .mentornet import MentorNet, fold_mentornet, mentornet_pd


def _generator_seed(generator: torch.Generator | None) -> int:
    """The seed of ``generator`` (of torch's default generator when None): the Philox key of
    in-kernel draws, as torch's own CUDA generator keys its Philox stream with its seed. Read on the
    host without drawing, so the generator's stream (the reference's draws) is left as it is;
    int64-ranged for the ``rng_state`` buffer."""
    seed = torch.initial_seed() if generator is None else generator.initial_seed()
    return seed & (2**63 - 1)


class MentorMixPlan(NamedTuple):
    """What the first pass decides for each of the B examples (all constants, no gradient).

    ``loss`` [B] per-example CE (fp32; fp64 for fp64 logits); ``weights`` [B] v in [0, 1];
    ``partner`` [B] int64 indices into the batch; ``lam`` [B] fp32 mixing factors.
    """

    loss: torch.Tensor
    weights: torch.Tensor
    partner: torch.Tensor
    lam: torch.Tensor


class MentorMix(nn.Module):
    """MentorMix (Jiang et al., ICML 2020) as a loss module with state (docs/SPEC.md).

    Args (keyword only; defaults are the release's flags, ``burn_in_epoch`` its training command's):
        total_steps: the step budget T; the epoch feature is ``min(floor(100 t / T), 99)``.
        percentile: p of the loss percentile tracked by the moving averages, in [0, 1].
        mixup_alpha: Beta(alpha, alpha) of the mixing factor; 0 turns mixing off.
        second_reweight: weight the mixed losses again (for high noise).
        burn_in_epoch: every weight is 1 while the epoch feature < burn_in_epoch - 1.
        weighting: "mentornet_pd" (the package's MentorNet-PD), "threshold" (v = 1[l < ma]) or a
            :class:`MentorNet` instance. The fast backends take it folded (SPEC §5), folded once
            here into the buffer ``mentornet_folded``; call :meth:`refold_mentornet` after changing
            a MentorNet's parameters in place (loading a ``state_dict`` refolds by itself).
        loss_ma_decay: d of ``ma = d * ma + (1 - d) * percentile``.
        backend: "auto", or a name from :func:`mentormix_fast.backends`.
        generator: torch.Generator for the draws (on the logits' device). The reference backend
            draws from it each step; the others key their in-kernel Philox stream with its seed
            (torch's initial seed when None) and count steps in ``rng_state``; reseeding it
            re-keys the stream at the next eager step.
        validate: "auto" checks label and partner values only where that needs no host sync (CPU
            tensors, outside torch.compile); True always; False never (a bad index then gives a
            NaN loss row, SPEC §4.1).
        percentile_gather: None (the percentile of the local batch), or a callable mapping the
            detached per-example losses [B] to the values the percentiles (of ``l`` and, with
            ``second_reweight``, of ``m``) are taken over, e.g.
            :func:`mentormix_fast.distributed.all_gather_cat` for the global batch under DDP.

    State (in ``state_dict``): ``loss_ma``, ``loss_ma_mixed`` (fp32 scalars), ``num_steps`` (the
    step used when a call passes ``step=None``, advanced by :meth:`mixed_loss`) and ``rng_state``
    (int64 [2]: Philox key and step counter of in-kernel draws, advanced by :meth:`plan`), so a run
    resumed from a ``state_dict`` draws exactly what the uninterrupted run would have. The
    kernels update them in place. A state_dict whose moving averages are not finite, whose step
    is negative or whose ``rng_state`` is malformed is refused.
    """

    def __init__(self, *, total_steps: int, percentile: float = 0.7, mixup_alpha: float = 8.0,
                 second_reweight: bool = True, burn_in_epoch: int = 10, weighting="mentornet_pd",
                 loss_ma_decay: float = 0.5, backend: str = "auto", generator: torch.Generator | None = None,
                 validate="auto", percentile_gather=None):
        super().__init__()
        if percentile_gather is not None and not callable(percentile_gather):
            raise TypeError(f"percentile_gather: expected a callable or None, got {type(percentile_gather).__name__}")
        if isinstance(burn_in_epoch, bool) or not isinstance(burn_in_epoch, int) or burn_in_epoch < 0:
            raise ValueError(f"burn_in_epoch: must be an integer >= 0, got {burn_in_epoch!r}")
        if validate not in ("auto", True, False):
            raise ValueError(f"validate: must be 'auto', True or False, got {validate!r}")
        if not isinstance(backend, str):
            raise TypeError(f"backend: expected a string, got {type(backend).__name__}")
        if backend != "auto" and backend not in dispatch.AUTO_ORDER:
            raise ValueError(f"backend: unknown backend {backend!r}; known backends: {list(dispatch.AUTO_ORDER)}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
        self.config = MentorMixConfig(
            percentile=validation.check_probability(percentile, "percentile"),
            mixup_alpha=validation.check_alpha(mixup_alpha),
            second_reweight=bool(second_reweight),
            burn_in_epoch=burn_in_epoch,
            total_steps=validation.check_total_steps(total_steps),
            loss_ma_decay=validation.check_probability(loss_ma_decay, "loss_ma_decay"),
        )
        if isinstance(weighting, MentorNet):
            self.mentornet = weighting
        elif weighting == "mentornet_pd":
            self.mentornet = mentornet_pd()
        elif weighting == "threshold":
            self.mentornet = None
        else:
            raise ValueError(f"weighting: expected 'mentornet_pd', 'threshold' or a MentorNet, got {weighting!r}")
        dispatch.load()  # import the optional backends now, not inside a torch.compile'd step
        self.backend = backend
        self.generator = generator
        self.validate = validate
        self.percentile_gather = percentile_gather
        self.register_buffer("loss_ma", torch.zeros((), dtype=torch.float32))
        self.register_buffer("loss_ma_mixed", torch.zeros((), dtype=torch.float32))
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.int64))
        self._keyed_by = _generator_seed(generator)
        self.register_buffer("rng_state", torch.tensor([self._keyed_by, 0], dtype=torch.int64))
        self.register_buffer("mentornet_folded", fold_mentornet(self.mentornet), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module.refold_mentornet())

    # -- state -----------------------------------------------------------------------------------

    def refold_mentornet(self) -> None:
        """Fold the MentorNet's current parameters again (after training or editing it in place)."""
        device = self.mentornet_folded.device
        self.mentornet_folded = fold_mentornet(self.mentornet, device)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in ("loss_ma", "loss_ma_mixed"):
            value = state_dict.get(prefix + name)
            if isinstance(value, torch.Tensor) and not bool(torch.isfinite(value).all()):
                error_msgs.append(f"{prefix}{name}: the moving average must be finite, got {value.tolist()}")
        steps = state_dict.get(prefix + "num_steps")
        if isinstance(steps, torch.Tensor) and (steps.numel() != 1 or int(steps) < 0):
            error_msgs.append(f"{prefix}num_steps: must be one integer >= 0, got {steps.tolist()}")
        rng = state_dict.get(prefix + "rng_state")
        if isinstance(rng, torch.Tensor) and (rng.shape != (2,) or rng.dtype != torch.int64):
            error_msgs.append(f"{prefix}rng_state: expected int64 [2], got {rng.dtype} {list(rng.shape)}")
        if error_msgs:
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @property
    def weighting(self):
        """The MentorNet module, or the string "threshold"."""
        return "threshold" if self.mentornet is None else self.mentornet

    def extra_repr(self) -> str:
        c = self.config
        return (f"total_steps={c.total_steps}, percentile={c.percentile}, mixup_alpha={c.mixup_alpha}, "
                f"second_reweight={c.second_reweight}, burn_in_epoch={c.burn_in_epoch}, "
                f"loss_ma_decay={c.loss_ma_decay}, backend={self.backend!r}")

    # -- helpers ---------------------------------------------------------------------------------

    def _follow(self, device: torch.device) -> None:
        # The state follows the logits (a metadata check, no sync), so users need not move the loss;
        # only once the call is known to go through (a refused device must not carry the state away).
        if self.generator is not None and self.generator.device.type != device.type:
            raise ValueError(f"generator: on {self.generator.device}, but the logits are on {device}")
        if self.loss_ma.device != device:
            self.to(device)

    def _check_values(self, device: torch.device) -> bool:
        if self.validate == "auto":
            return device.type == "cpu" and not torch.compiler.is_compiling()
        return bool(self.validate)

    def _step(self, step, device: torch.device):
        """The step as the ops take it: the ``num_steps`` buffer for None, a checked 0-d tensor, or an
        int as a CPU scalar (read by the launchers on the host; on the device inside torch.compile)."""
        if step is None:
            return self.num_steps
        step = validation.check_step(step, self.config.total_steps)
        if isinstance(step, torch.Tensor):
            return step
        if torch.compiler.is_compiling():
            return torch.full((), step, dtype=torch.int64, device=device)
        return torch.tensor(step, dtype=torch.int64)

    def _follow_reseeding(self) -> None:
        # In-kernel draws are keyed by the generator's seed. A generator reseeded since (e.g. per
        # step, or torch.manual_seed after construction with generator=None) re-keys them: a host
        # comparison each eager step, one small fill only when the seed changed. Traced steps keep
        # their key (Dynamo cannot read a Generator).
        if torch.compiler.is_compiling():
            return
        seed = _generator_seed(self.generator)
        if seed != self._keyed_by:
            self._keyed_by = seed
            with torch.no_grad():
                self.rng_state[0].fill_(seed)

    def _draws(self, backend, batch: int, device: torch.device):
        """``(uniform, beta)``: the reference's draws from the generator, or ``(None, None)`` for a
        backend that draws in its kernels (keyed by the generator's seed)."""
        if not backend.reference:
            self._follow_reseeding()
            return None, None
        if self.config.mixup_alpha <= 0:
            return None, None
        return (reference.draw_uniform(batch, self.generator, device),
                reference.draw_beta(self.config.mixup_alpha, batch, self.generator, device))

    def _mentornet_arg(self, backend):
        return self.mentornet if backend.reference else self.mentornet_folded

    def _pool(self, backend, logits, target, partner=None, lam=None):
        """The values the percentile is taken over: None (the batch's own), or the gathered losses."""
        if self.percentile_gather is None:
            return None
        values = backend.ops.ce(logits.detach(), target, partner, lam)
        pool = self.percentile_gather(values)
        return pool.to(values.dtype).contiguous()

    def _check_plan(self, plan: MentorMixPlan, batch: int, device: torch.device) -> None:
        if not isinstance(plan, MentorMixPlan):
            raise TypeError(f"plan: expected the MentorMixPlan returned by plan(), got {type(plan).__name__}")
        validation.check_per_example(plan.partner, batch, device, "plan.partner", integer=True)
        validation.check_per_example(plan.lam, batch, device, "plan.lam")
        if self._check_values(device):
            validation.check_index_values(plan.partner, batch, "plan.partner")

    # -- the three steps ---------------------------------------------------------------------------

    def plan(self, logits: torch.Tensor, target: torch.Tensor, step=None) -> MentorMixPlan:
        """Steps 2-6 on the first-pass logits [B, K]: loss, weights, partners and lam; updates
        ``loss_ma`` (and the Philox counter)."""
        validation.check_logits(logits)
        device = logits.device
        batch = logits.shape[0]
        target = validation.check_target(target, batch, logits.shape[1], device, self._check_values(device))
        backend = dispatch.choose(self.backend, device, logits.dtype)
        self._follow(device)
        step = self._step(step, device)
        logits = logits.detach()
        uniform, beta = self._draws(backend, batch, device)
        pool = self._pool(backend, logits, target)
        c = self.config
        out = backend.ops.plan(logits, target, self.loss_ma, self.rng_state, self._mentornet_arg(backend), step, pool,
                               uniform, beta, c.total_steps, c.percentile, c.loss_ma_decay, c.burn_in_epoch,
                               c.mixup_alpha)
        return MentorMixPlan(*out)

    def mix_inputs(self, x: torch.Tensor, plan: MentorMixPlan) -> torch.Tensor:
        """Step 7: ``lam_i * x_i + (1 - lam_i) * x_{partner_i}`` for x [B, ...] of a float dtype."""
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError("x: expected a tensor of shape [B, ...]")
        if not x.dtype.is_floating_point:
            raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
        self._check_plan(plan, x.shape[0], x.device)
        backend = dispatch.choose(self.backend, x.device, x.dtype, for_mix=True)
        return backend.ops.mix(x, plan.partner.to(torch.int64), plan.lam.to(torch.float32))

    def mixed_loss(self, logits_mixed: torch.Tensor, target: torch.Tensor, plan: MentorMixPlan, step=None):
        """Steps 8-9: the scalar loss on the second-pass logits (differentiable); updates
        ``loss_ma_mixed`` when ``second_reweight`` and sets ``num_steps`` to ``clamp(step, 0, T) + 1``. Every
        argument is checked before any state moves, so a call that raised can be repeated."""
        validation.check_logits(logits_mixed, "logits_mixed")
        device = logits_mixed.device
        batch = logits_mixed.shape[0]
        target = validation.check_target(target, batch, logits_mixed.shape[1], device, self._check_values(device))
        self._check_plan(plan, batch, device)
        backend = dispatch.choose(self.backend, device, logits_mixed.dtype)
        self._follow(device)
        step = self._step(step, device)
        c = self.config
        partner = plan.partner.to(torch.int64)
        compute = torch.float64 if logits_mixed.dtype == torch.float64 else torch.float32
        lam = plan.lam.to(compute)
        pool = self._pool(backend, logits_mixed, target, partner, lam) if c.second_reweight else None
        state = MixedLossState(backend, self.loss_ma_mixed, self.num_steps, self._mentornet_arg(backend), step, pool,
                               c.total_steps, c.percentile, c.loss_ma_decay, c.burn_in_epoch, c.second_reweight)
        return MentorMixLossFunction.apply(logits_mixed, target, partner, lam, None, state)

    def forward(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, step=None) -> torch.Tensor:
        """One whole MentorMix step: first pass under no_grad (BatchNorm statistics untouched),
        plan, input mix, second pass with gradient; returns the loss."""
        with torch.no_grad(), frozen_batchnorm_stats(model):
            logits = model(x)
        plan = self.plan(logits, target, step)
        logits_mixed = model(self.mix_inputs(x, plan))
        return self.mixed_loss(logits_mixed, target, plan, step)

