"""Backend registry and dispatch.

A backend implements the three fused operations of SPEC §4 for some devices:

* ``weights_and_sample(logits, target, loss_ma, epoch, config, weighting, generator, uniform=None,
  beta=None) -> reference.WeightsAndSample``: steps 2-6. With ``uniform``/``beta`` given it must use
  those draws (so it can be compared with the reference exactly); otherwise it draws from
  ``generator`` on the device.
* ``mix(x, partner, lam) -> x_mixed``: step 7.
* ``mixed_loss(logits, target, partner, lam, loss_ma_mixed, epoch, config, weighting) ->
  (loss, new_loss_ma_mixed)``: steps 8-9, the loss differentiable w.r.t. ``logits``.

A backend that sets ``updates_state_in_place = True`` also implements the step on a
:class:`StepState` (the module's buffers), updating it in place, so that a step needs no copy
launches: ``weights_and_sample_(logits, target, state, step, config, weighting, generator) ->
(loss, weights, partner, lam)`` (updates ``loss_ma``, may advance ``rng``) and
``mixed_loss_(logits, target, partner, lam, state, step, config, weighting) -> loss`` (updates
``loss_ma_mixed`` when second reweighting, sets ``num_steps`` to ``step + 1``). ``step`` is an int
or a 0-d integer tensor (possibly ``state.num_steps`` itself). :func:`step_weights_and_sample` and
:func:`step_mixed_loss` give every backend this API (the functional one plus copies).

A backend that sets ``supports_percentile_gather = True`` also accepts a keyword
``percentile_gather`` (a callable [B] -> [N], e.g. an all-gather) in ``weights_and_sample`` and
``mixed_loss``, and takes the percentile over its output; :class:`MentorMix` refuses the option with
any other backend.

``"auto"`` picks the first backend in :data:`AUTO_ORDER` that is available and supports the
tensors' device; ``"reference"`` always works.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import torch

from . import reference
from .config import MentorMixConfig

AUTO_ORDER = ("cuda", "triton", "cpu", "reference")
_BACKENDS: dict[str, object] = {}
_UNAVAILABLE: dict[str, str] = {}
# Optional backends live in modules that register themselves when imported.
_OPTIONAL_MODULES = {"triton": "mentormix_fast.triton_backend", "cpu": "mentormix_fast.cpp_backend",
                     "cuda": "mentormix_fast.cpp_backend"}
_loaded = False


class ReferenceBackend:
    """Plain PyTorch (mentormix_fast.reference): any device, any float dtype; defines the semantics."""

    name = "reference"
    supports_percentile_gather = True

    def supports(self, device: torch.device) -> bool:
        return True

    def weights_and_sample(self, logits, target, loss_ma, epoch, config: MentorMixConfig, weighting, generator,
                           uniform=None, beta=None, percentile_gather=None):
        batch, device = logits.shape[0], logits.device
        if config.mixup_alpha > 0:
            uniform = reference.draw_uniform(batch, generator, device) if uniform is None else uniform
            beta = reference.draw_beta(config.mixup_alpha, batch, generator, device) if beta is None else beta
        return reference.weights_and_sample(
            logits, target, loss_ma, epoch, percentile=config.percentile, decay=config.loss_ma_decay,
            weighting=weighting, burn_in_epoch=config.burn_in_epoch, alpha=config.mixup_alpha,
            uniform=uniform, beta=beta, percentile_gather=percentile_gather)

    def mix(self, x, partner, lam):
        return reference.mix_inputs(x, partner, lam)

    def mixed_loss(self, logits, target, partner, lam, loss_ma_mixed, epoch, config: MentorMixConfig, weighting,
                   percentile_gather=None):
        out = reference.mixed_loss_step(
            logits, target, partner, lam, loss_ma_mixed, epoch, second_reweight=config.second_reweight,
            percentile=config.percentile, decay=config.loss_ma_decay, weighting=weighting,
            burn_in_epoch=config.burn_in_epoch, percentile_gather=percentile_gather)
        return out.loss, out.loss_ma_mixed


def register_backend(backend) -> None:
    """Make ``backend`` (an object with ``name``, ``supports`` and the three operations) selectable."""
    _BACKENDS[backend.name] = backend
    _UNAVAILABLE.pop(backend.name, None)


def mark_unavailable(name: str, reason: str) -> None:
    """Record why an optional backend cannot be used here (shown by :func:`backends`)."""
    if name not in _BACKENDS:
        _UNAVAILABLE[name] = reason


def load_backends() -> None:
    """Import the optional backend modules once (outside any compiled region: imports don't trace)."""
    _load_optional()


def _load_optional() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name, module in _OPTIONAL_MODULES.items():
        if name in _BACKENDS or name in _UNAVAILABLE:
            continue
        try:
            importlib.import_module(module)
        except Exception as exc:  # an optional backend must never break the import of the package
            mark_unavailable(name, f"{type(exc).__name__}: {exc}")
        if name not in _BACKENDS and name not in _UNAVAILABLE:
            mark_unavailable(name, f"{module} did not register it")


def backends() -> dict[str, str]:
    """Every known backend with ``"available"`` or the reason it is not, e.g.
    ``{"reference": "available", "triton": "available", "cuda": "no CUDA device"}``."""
    _load_optional()
    status = {name: "available" for name in _BACKENDS}
    status.update(_UNAVAILABLE)
    return {name: status[name] for name in sorted(status, key=lambda n: (n not in AUTO_ORDER, AUTO_ORDER.index(n)
                                                                         if n in AUTO_ORDER else 0, n))}


def get_backend(name: str, device: torch.device):
    """The backend object for ``name`` (or the best one for ``device`` when ``name == "auto"``)."""
    _load_optional()
    if name == "auto":
        for candidate in AUTO_ORDER:
            backend = _BACKENDS.get(candidate)
            # A backend may support a device without being the best choice there (Triton's CPU
            # interpreter): ``preferred_for`` says where "auto" should pick it.
            if backend is not None and getattr(backend, "preferred_for", backend.supports)(device):
                return backend
        return _BACKENDS["reference"]
    if name not in _BACKENDS:
        known = sorted(set(_BACKENDS) | set(_UNAVAILABLE))
        reason = _UNAVAILABLE.get(name)
        detail = f" ({reason})" if reason else f"; known backends: {known}"
        raise ValueError(f"backend: {name!r} is not available{detail}")
    backend = _BACKENDS[name]
    if not backend.supports(device):
        raise ValueError(f"backend: {name!r} does not support tensors on {device}")
    return backend


class StepState(NamedTuple):
    """The state one MentorMix step reads and updates (the module's buffers): ``loss_ma`` and
    ``loss_ma_mixed`` (fp32, 0-d), ``num_steps`` (int64, 0-d), ``rng`` (int64 [2]: the Philox key
    and step counter of backends that draw in their kernels)."""

    loss_ma: torch.Tensor
    loss_ma_mixed: torch.Tensor
    num_steps: torch.Tensor
    rng: torch.Tensor


def _epoch(step, config: MentorMixConfig):
    return reference.epoch_feature(step, config.total_steps)


def step_weights_and_sample(backend, logits, target, state: StepState, step, config: MentorMixConfig, weighting,
                            generator, **gather):
    """Steps 2-6 with ``state.loss_ma`` updated: ``(loss, weights, partner, lam)``. In place where
    the backend can (no ``percentile_gather``); else its functional API and a copy."""
    if getattr(backend, "updates_state_in_place", False) and not gather:
        return backend.weights_and_sample_(logits, target, state, step, config, weighting, generator)
    out = backend.weights_and_sample(logits, target, state.loss_ma, _epoch(step, config), config, weighting,
                                     generator, **gather)
    state.loss_ma.copy_(out.loss_ma)
    return out.loss, out.weights, out.partner, out.lam


def step_mixed_loss(backend, logits, target, partner, lam, state: StepState, step, config: MentorMixConfig,
                    weighting, **gather):
    """Steps 8-9 with ``state.loss_ma_mixed`` updated and ``state.num_steps = step + 1``; returns
    the loss (differentiable in ``logits``)."""
    if getattr(backend, "updates_state_in_place", False) and not gather:
        return backend.mixed_loss_(logits, target, partner, lam, state, step, config, weighting)
    loss, new_ma2 = backend.mixed_loss(logits, target, partner, lam, state.loss_ma_mixed, _epoch(step, config), config,
                                       weighting, **gather)
    with torch.no_grad():  # small launches, no host sync
        if config.second_reweight:
            state.loss_ma_mixed.copy_(new_ma2)
        if isinstance(step, torch.Tensor):
            torch.add(step, 1, out=state.num_steps)
        else:
            state.num_steps.fill_(step + 1)
    return loss


register_backend(ReferenceBackend())
