"""The public ``nn.Module``: :class:`MentorMix`, one MentorMix loss with its moving-average state."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from . import validation
from .backends import StepState, get_backend, load_backends, step_mixed_loss, step_weights_and_sample
from .batchnorm import frozen_batchnorm_stats
from .config import MentorMixConfig
from .mentornet import MentorNet, mentornet_pd


def _generator_seed(generator: torch.Generator | None) -> int:
    """The seed of ``generator`` (of torch's default generator when None): the Philox key of
    in-kernel draws, as torch's own CUDA generator keys its Philox stream with its seed. Read on the
    host, without drawing, so the generator's stream (used per step by the other backends) is left
    as it is; int64-ranged for the ``rng_state`` buffer."""
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
    """MentorMix (Jiang et al., ICML 2020) as a loss module with state.

    Args (keyword only; defaults are the release's flags, ``burn_in_epoch`` its training command's):
        total_steps: the step budget T; the epoch feature is ``min(floor(100 t / T), 99)``.
        percentile: p of the loss percentile tracked by the moving averages, in [0, 1].
        mixup_alpha: Beta(alpha, alpha) of the mixing factor; 0 turns mixing off.
        second_reweight: weight the mixed losses again (for high noise).
        burn_in_epoch: every weight is 1 while the epoch feature < burn_in_epoch - 1.
        weighting: "mentornet_pd" (the package's MentorNet-PD), "threshold" (v = 1[l < ma]) or a
            :class:`MentorNet` instance.
        loss_ma_decay: d of ``ma = d * ma + (1 - d) * percentile``.
        backend: "auto", "reference", or a name from :func:`mentormix_fast.backends`.
        generator: torch.Generator for the partner and Beta draws (on the logits' device). Backends
            that draw in their kernels (triton) key their Philox stream with its seed (torch's
            initial seed when None) and count steps in ``rng_state``; reseeding it re-keys the
            stream at the next eager step.
        validate: "auto" checks label values only where that needs no host sync (CPU tensors,
            outside torch.compile); True always; False never (bad labels then give a NaN loss).
        percentile_gather: None (default: the percentile of the local batch), or a callable mapping
            the detached per-example losses [B] to the values the percentiles (of ``l`` and, with
            ``second_reweight``, of ``m``) are taken over, e.g.
            :func:`mentormix_fast.distributed.all_gather_cat` for the global batch under DDP. Only
            backends with ``supports_percentile_gather`` (the reference) implement it; others raise.

    State (in ``state_dict``): ``loss_ma``, ``loss_ma_mixed`` (fp32 scalars), ``num_steps``, the
    step used when a call passes ``step=None`` (advanced by :meth:`mixed_loss`), and ``rng_state``
    (int64 [2]: Philox key and step counter of in-kernel draws, advanced by :meth:`plan`; so a run
    resumed from a ``state_dict`` draws exactly what the uninterrupted run would have). Backends
    that support it update these buffers inside their kernels (no copy launches).
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
        load_backends()  # import optional backends now, not inside a torch.compile'd step
        self.backend = backend
        self.generator = generator
        self.validate = validate
        self.percentile_gather = percentile_gather
        self.register_buffer("loss_ma", torch.zeros((), dtype=torch.float32))
        self.register_buffer("loss_ma_mixed", torch.zeros((), dtype=torch.float32))
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.int64))
        self._keyed_by = _generator_seed(generator)
        self.register_buffer("rng_state", torch.tensor([self._keyed_by, 0], dtype=torch.int64))

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def weighting(self):
        """What the backends receive: the MentorNet module or the string "threshold"."""
        return "threshold" if self.mentornet is None else self.mentornet

    def extra_repr(self) -> str:
        c = self.config
        return (f"total_steps={c.total_steps}, percentile={c.percentile}, mixup_alpha={c.mixup_alpha}, "
                f"second_reweight={c.second_reweight}, burn_in_epoch={c.burn_in_epoch}, "
                f"loss_ma_decay={c.loss_ma_decay}, backend={self.backend!r}")

    def _follow(self, device: torch.device) -> None:
        # The state follows the logits (a metadata check, no sync), so users need not move the loss.
        if self.loss_ma.device != device:
            self.to(device)
        if self.generator is not None and self.generator.device.type != device.type:
            raise ValueError(f"generator: on {self.generator.device}, but the logits are on {device}")

    def _check_values(self, device: torch.device) -> bool:
        if self.validate == "auto":
            return device.type == "cpu" and not torch.compiler.is_compiling()
        return bool(self.validate)

    def _step(self, step):
        return self.num_steps if step is None else validation.check_step(step, self.config.total_steps)

    def _state(self) -> StepState:
        return StepState(self.loss_ma, self.loss_ma_mixed, self.num_steps, self.rng_state)

    def _follow_reseeding(self) -> None:
        # The in-kernel draws are keyed by the generator's seed. A generator reseeded since (e.g.
        # per step, or torch.manual_seed after construction with generator=None) re-keys them: a
        # host-side comparison each eager step, one small fill only when the seed changed.
        # Traced steps keep their key (Dynamo cannot read a Generator).
        if torch.compiler.is_compiling():
            return
        seed = _generator_seed(self.generator)
        if seed != self._keyed_by:
            self._keyed_by = seed
            with torch.no_grad():
                self.rng_state[0].fill_(seed)

    def _gather_kwargs(self, backend) -> dict:
        # Passed only when set, so backends without the option keep their plain signature.
        if self.percentile_gather is None:
            return {}
        if not getattr(backend, "supports_percentile_gather", False):
            raise ValueError(f"percentile_gather: not implemented by the {backend.name!r} backend; "
                             f"use backend='reference' for the global-batch percentile")
        return {"percentile_gather": self.percentile_gather}

    def _check_plan(self, plan: MentorMixPlan, batch: int, device: torch.device) -> None:
        if not isinstance(plan, MentorMixPlan):
            raise TypeError(f"plan: expected the MentorMixPlan returned by plan(), got {type(plan).__name__}")
        validation.check_per_example(plan.partner, batch, device, "plan.partner", integer=True)
        validation.check_per_example(plan.lam, batch, device, "plan.lam")

    # -- the three steps ---------------------------------------------------------------------------

    def plan(self, logits: torch.Tensor, target: torch.Tensor, step=None) -> MentorMixPlan:
        """Steps 2-6 on the first-pass logits [B, K]: loss, weights, partners and lam; updates ``loss_ma``."""
        validation.check_logits(logits)
        device = logits.device
        target = validation.check_target(target, logits.shape[0], logits.shape[1], device,
                                         self._check_values(device))
        self._follow(device)
        backend = get_backend(self.backend, device)
        gather = self._gather_kwargs(backend)
        if getattr(backend, "updates_state_in_place", False):
            self._follow_reseeding()
        out = step_weights_and_sample(backend, logits.detach(), target, self._state(), self._step(step), self.config,
                                      self.weighting, self.generator, **gather)
        return MentorMixPlan(*out)

    def mix_inputs(self, x: torch.Tensor, plan: MentorMixPlan) -> torch.Tensor:
        """Step 7: ``lam_i * x_i + (1 - lam_i) * x_{partner_i}`` for x [B, ...] of a float dtype."""
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise ValueError("x: expected a tensor of shape [B, ...]")
        if not x.dtype.is_floating_point:
            raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
        self._check_plan(plan, x.shape[0], x.device)
        return get_backend(self.backend, x.device).mix(x, plan.partner, plan.lam)

    def mixed_loss(self, logits_mixed: torch.Tensor, target: torch.Tensor, plan: MentorMixPlan, step=None):
        """Steps 8-9: the scalar loss on the second-pass logits (differentiable); updates
        ``loss_ma_mixed`` when ``second_reweight`` and advances ``num_steps`` to ``step + 1``."""
        validation.check_logits(logits_mixed, "logits_mixed")
        device = logits_mixed.device
        batch = logits_mixed.shape[0]
        target = validation.check_target(target, batch, logits_mixed.shape[1], device, self._check_values(device))
        self._check_plan(plan, batch, device)
        self._follow(device)
        backend = get_backend(self.backend, device)
        gather = self._gather_kwargs(backend)
        return step_mixed_loss(backend, logits_mixed, target, plan.partner, plan.lam, self._state(), self._step(step),
                               self.config, self.weighting, **gather)

    def forward(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, step=None) -> torch.Tensor:
        """One whole MentorMix step: first pass under no_grad (BatchNorm statistics untouched),
        plan, input mix, second pass with gradient; returns the loss."""
        with torch.no_grad(), frozen_batchnorm_stats(model):
            logits = model(x)
        plan = self.plan(logits, target, step)
        logits_mixed = model(self.mix_inputs(x, plan))
        return self.mixed_loss(logits_mixed, target, plan, step)
