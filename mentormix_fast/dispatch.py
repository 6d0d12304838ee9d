"""Which backend runs a step, and its ops (SPEC §5).

A backend is a set of the five ops of the contract (``ce``, ``plan``, ``mix``, ``mixed_loss``,
``mixed_loss_backward``), with the same arguments in every backend:

* ``"cuda"``: ``torch.ops.mentormix_cpp`` on CUDA tensors (csrc/cuda, extension ``_C_cuda``);
* ``"triton"``: ``torch.ops.mentormix_triton`` (kernels/); CUDA tensors, and CPU tensors under
  ``TRITON_INTERPRET=1`` (tests), where ``"auto"`` never picks it;
* ``"cpu"``: ``torch.ops.mentormix_cpp`` on CPU tensors (csrc/cpu, extension ``_C``);
* ``"reference"``: :class:`ReferenceOps`, the plain-PyTorch semantics on any device and dtype. It
  takes the MentorNet itself (not its fold) and always takes explicit draws.

``"auto"`` picks the first of :data:`AUTO_ORDER` that is available and serves the device. Logits
of a dtype a backend has no kernels for (float64) go to the reference: :func:`choose` is the one
place that decides it. :func:`backends` says what this installation can run, and why not.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from importlib import resources

import torch

from . import reference
from .autograd import register_mix_autograd

AUTO_ORDER = ("cuda", "triton", "cpu", "reference")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ANY_FLOAT = KERNEL_DTYPES + (torch.float64,)


@dataclass(frozen=True)
class Backend:
    """``ops``: the five ops; ``devices``: the device types it runs on; ``auto_devices``: where
    ``"auto"`` picks it; ``dtypes``: the logits dtypes of its kernels; ``mix_dtypes``: the input
    dtypes of its ``mix``; ``reference``: takes the MentorNet module and explicit draws."""

    name: str
    ops: object
    devices: tuple[str, ...]
    auto_devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...] = KERNEL_DTYPES
    mix_dtypes: tuple[torch.dtype, ...] = KERNEL_DTYPES
    reference: bool = False

    def serves(self, device: torch.device) -> bool:
        return torch.device(device).type in self.devices


class ReferenceOps:
    """The op contract of SPEC §5 in plain PyTorch (mentormix_fast.reference), for every device and
    float dtype. Differences from the fast backends: ``mentornet`` is the :class:`MentorNet` itself
    (None: threshold), ``uniform``/``beta`` are required when ``alpha > 0`` (``rng_state`` is not
    used), and ``step`` may also be a Python int."""

    @staticmethod
    def ce(logits, target, partner, lam):
        with torch.no_grad():
            if partner is None:
                return reference.per_sample_ce(logits, target)
            return reference.mixed_ce(logits, target, partner, lam)

    @staticmethod
    def plan(logits, target, loss_ma, rng_state, mentornet, step, pool, uniform, beta, total_steps, percentile,
             decay, burn_in_epoch, alpha):
        del rng_state  # the reference draws with torch ops: its draws come in as arguments
        if alpha > 0 and (uniform is None or beta is None):
            raise ValueError("uniform and beta: the reference backend takes its draws as arguments")
        out = reference.weights_and_sample(
            logits, target, loss_ma, _epoch(step, total_steps, logits.device), percentile=percentile, decay=decay,
            weighting="threshold" if mentornet is None else mentornet, burn_in_epoch=burn_in_epoch, alpha=alpha,
            uniform=uniform, beta=beta, pool=pool)
        with torch.no_grad():
            loss_ma.copy_(out.loss_ma)
        return out.loss, out.weights, out.partner, out.lam

    @staticmethod
    def mix(x, partner, lam):
        return reference.mix_inputs(x, partner, lam)

    @staticmethod
    def mixed_loss(logits, target, partner, lam, given_weights, loss_ma_mixed, num_steps, mentornet, step, pool,
                   total_steps, percentile, decay, burn_in_epoch, second_reweight):
        with torch.no_grad():
            z = logits.detach()
            m = reference.mixed_ce(z, target, partner, lam)
            lse = torch.logsumexp(z.to(m.dtype), dim=1)
            weights = m.new_empty(0)
            if second_reweight:
                new_ma = reference.update_moving_average(
                    loss_ma_mixed, reference.percentile_nearest(m if pool is None else pool, percentile), decay)
                weights = reference.sample_weights("threshold" if mentornet is None else mentornet, m, new_ma,
                                                   _epoch(step, total_steps, logits.device), burn_in_epoch)
                loss_ma_mixed.copy_(new_ma)
                loss = reference.weighted_mean(m, weights)
            else:
                loss = reference.weighted_mean(m, given_weights)
            if num_steps is not None:
                if isinstance(step, torch.Tensor):
                    num_steps.copy_(step.reshape(()).to(num_steps.device).clamp(0, total_steps) + 1)
                else:
                    num_steps.fill_(min(max(int(step), 0), total_steps) + 1)
        return loss, lse, weights

    @staticmethod
    def mixed_loss_backward(grad_loss, logits, target, partner, lam, lse, weights):
        del lse  # the closed form recomputes the softmax
        w = weights if weights is not None and weights.numel() else None
        return reference.mixed_loss_grad(logits, target, partner, lam, w, grad_loss).to(logits.dtype)


def _epoch(step, total_steps: int, device):
    if isinstance(step, torch.Tensor) and step.device != device and step.device.type == "cpu":
        step = int(step)  # a host scalar: no synchronisation
    return reference.epoch_feature(step, total_steps)


REFERENCE = Backend("reference", ReferenceOps, devices=("cpu", "cuda", "mps", "xpu", "meta"),
                    auto_devices=("cpu", "cuda", "mps", "xpu", "meta"), dtypes=ANY_FLOAT, mix_dtypes=ANY_FLOAT,
                    reference=True)

_available: dict[str, Backend] = {"reference": REFERENCE}
_reasons: dict[str, str] = {}
_loaded = False


def _build_info() -> dict:
    try:
        return json.loads(resources.files("mentormix_fast").joinpath("_build_info.json").read_text())
    except (OSError, ValueError):
        return {}


_ISA_ORDER = ("default", "avx2", "avx512")


def missing_cpu_features(isa: str, capability: str | None = None) -> str | None:
    """What this CPU lacks to run C++ kernels compiled for ``isa`` (a build copied from another
    machine would die of an illegal instruction), from ATen's own detection of the CPU; None if
    nothing is missing."""
    capability = (capability or torch.backends.cpu.get_cpu_capability()).lower()
    have = next((i for i in ("avx512", "avx2") if capability.startswith(i)), "default")
    if _ISA_ORDER.index(isa if isa in _ISA_ORDER else "default") <= _ISA_ORDER.index(have):
        return None
    return f"{isa} instructions (ATen detects {capability})"


def _load_cpp() -> None:
    info = _build_info()
    try:
        importlib.import_module("mentormix_fast._C")
    except ImportError as exc:
        reason = (f"extension mentormix_fast._C not built or not loadable ({exc}); reinstall with "
                  f"`pip install --no-build-isolation .`")
        _reasons["cpu"] = _reasons["cuda"] = reason
        return
    ops = torch.ops.mentormix_cpp
    register_mix_autograd(ops.mix.default)
    isa = ops.cpu_isa()
    missing = missing_cpu_features(isa)
    if missing:
        _reasons["cpu"] = (f"mentormix_fast._C was built for {isa}, this CPU lacks {missing}; "
                           f"rebuild with MENTORMIX_CPU_ISA=default")
    else:
        _available["cpu"] = Backend("cpu", ops, devices=("cpu",), auto_devices=("cpu",))
    try:
        importlib.import_module("mentormix_fast._C_cuda")
    except ImportError:
        _reasons["cuda"] = f"extension mentormix_fast._C_cuda not built ({info.get('cuda', 'unknown reason')})"
        return
    if not torch.cuda.is_available():
        _reasons["cuda"] = "no CUDA device"
        return
    _available["cuda"] = Backend("cuda", ops, devices=("cuda",), auto_devices=("cuda",))


def _load_triton() -> None:
    try:
        kernels = importlib.import_module("mentormix_fast.kernels")
    except Exception as exc:  # no triton, or a triton that cannot load: the package still imports
        _reasons["triton"] = f"Triton kernels unavailable ({type(exc).__name__}: {exc})"
        return
    ops = torch.ops.mentormix_triton
    register_mix_autograd(ops.mix.default)
    devices = ("cuda", "cpu") if kernels._library.interpreting() else ("cuda",)
    _available["triton"] = Backend("triton", ops, devices=devices, auto_devices=("cuda",),
                                   mix_dtypes=ANY_FLOAT)


def load() -> None:
    """Import the optional backends once (call it outside any compiled region: imports don't trace)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for loader in (_load_cpp, _load_triton):
        try:
            loader()
        except Exception as exc:  # an optional backend must never break the import of the package
            name = "triton" if loader is _load_triton else "cpu"
            _reasons.setdefault(name, f"{type(exc).__name__}: {exc}")


def backends() -> dict[str, str]:
    """Every backend with ``"available"`` or the reason it is not, in ``"auto"``'s order, e.g.
    ``{"cuda": "no CUDA device", "triton": "available", "cpu": "available", "reference": "available"}``."""
    load()
    status = {name: "available" for name in _available} | {n: r for n, r in _reasons.items() if n not in _available}
    return {name: status[name] for name in AUTO_ORDER if name in status}


def choose(name: str, device, dtype: torch.dtype | None = None, *, for_mix: bool = False) -> Backend:
    """The backend that runs an op on tensors of ``device`` and ``dtype``: ``name``, or the first of
    :data:`AUTO_ORDER` that serves the device for ``"auto"``; a dtype without kernels there
    (float64) runs on the reference."""
    load()
    device = torch.device(device)
    if name == "auto":
        backend = next(b for b in (_available.get(n) for n in AUTO_ORDER) if b is not None
                       and device.type in b.auto_devices)
    elif name in _available:
        backend = _available[name]
        if not backend.serves(device):
            raise ValueError(f"backend: {name!r} does not support tensors on {device}")
    elif name in _reasons:
        raise ValueError(f"backend: {name!r} is not available ({_reasons[name]})")
    else:
        raise ValueError(f"backend: unknown backend {name!r}; known backends: {sorted(AUTO_ORDER)}")
    dtypes = backend.mix_dtypes if for_mix else backend.dtypes
    if dtype is not None and dtype not in dtypes:
        return REFERENCE
    return backend
