"""The compiled backends: ``"cpu"`` (C++ kernels of ``mentormix_fast._C``, csrc/cpu) and ``"cuda"``
(``mentormix_fast._C_cuda``, csrc/cuda), both behind the ops ``torch.ops.mentormix_cpp.*``.

Importing this module never fails: a backend whose extension is missing (not built, failed to
load, wrong instruction set) is reported through :func:`mentormix_fast.backends.mark_unavailable`.

Division of work (SPEC §4), per call, with no host synchronisation on a GPU:
  * Python: argument plumbing, the percentile rank (a function of B and p only) and the folded
    MentorNet table (cached per parameter version, see :func:`fold_mentornet`);
  * C++/CUDA: everything that reads the logits or is O(B) (loss, percentile select, moving
    average, MentorNet, softmax sampling, lam, the mixed loss and its gradient), and the random
    draws: one key from the caller's generator per step (CPU: random64(); CUDA: its Philox
    state, CUDA-graph safe), then a Philox stream per example (csrc/common/draws.h), so a seeded
    generator gives reproducible steps whatever the thread count.
    (The draws differ from the reference backend's; with ``uniform``/``beta`` given, as the
    tests do, the results match the reference.)
float64 logits (gradcheck territory) are delegated to the reference.
"""

from __future__ import annotations

import json
from importlib import resources

import torch

from . import reference
from .backends import ReferenceBackend, mark_unavailable, register_backend
from .mentornet import MentorNet

_REFERENCE = ReferenceBackend()
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _build_info() -> dict:
    try:
        return json.loads(resources.files("mentormix_fast").joinpath("_build_info.json").read_text())
    except (OSError, ValueError):
        return {}


# --------------------------------------------------------------------------------------------------
# MentorNet folding (csrc/common/mentornet_layout.h)
# --------------------------------------------------------------------------------------------------

_FOLD_CACHE: dict[int, tuple[tuple, torch.Tensor]] = {}


def fold_mentornet(net: MentorNet, device: torch.device) -> torch.Tensor:
    """The MentorNet as the kernels take it: float32 [2092] =
    ``base`` [100, 20] (``E_l[0] @ W1[0:2] + E_e[e] @ W1[2:7] + b1`` for every epoch e),
    ``W1[7]``, ``W1[8]``, ``W2[:, 0] + b2`` (3 x [20]) and the LSTM gate coefficients [12]
    (per direction: kernel[0, i], kernel[1, i], bias[i], kernel[0, j], kernel[1, j], bias[j]).

    Built once per (parameters' storage, version counters, device) and cached: no per-step work.
    """
    if torch.compiler.is_compiling():  # traced into the graph instead (version counters are not traceable)
        return _fold(net, device)
    params = [net.label_embedding, net.epoch_embedding, net.lstm_fw_kernel, net.lstm_fw_bias, net.lstm_bw_kernel,
              net.lstm_bw_bias, net.fc1_weight, net.fc1_bias, net.fc2_weight, net.fc2_bias]
    key = (str(device),) + tuple((p.data_ptr(), p._version) for p in params)
    cached = _FOLD_CACHE.get(id(net))
    if cached is not None and cached[0] == key:
        return cached[1]
    folded = _fold(net, device)
    _FOLD_CACHE[id(net)] = (key, folded)
    return folded


def _fold(net: MentorNet, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        w1 = net.fc1_weight.float()
        base = net.label_embedding[0].float() @ w1[0:2] + net.epoch_embedding.float() @ w1[2:7] + net.fc1_bias.float()
        w2 = (net.fc2_weight[:, 0] + net.fc2_bias).float()

        def gates(kernel, bias):
            return torch.stack([kernel[0, 0], kernel[1, 0], bias[0], kernel[0, 1], kernel[1, 1], bias[1]]).float()

        folded = torch.cat([base.reshape(-1), w1[7], w1[8], w2, gates(net.lstm_fw_kernel, net.lstm_fw_bias),
                            gates(net.lstm_bw_kernel, net.lstm_bw_bias)]).to(device).contiguous()
    return folded


def _weighting_tensor(weighting, device: torch.device) -> torch.Tensor:
    if isinstance(weighting, str):
        if weighting != "threshold":
            raise ValueError(f"weighting: expected 'threshold' or a MentorNet, got {weighting!r}")
        return torch.empty(0, dtype=torch.float32, device=device)
    return fold_mentornet(weighting, device)


def _epoch_tensor(epoch, device: torch.device) -> torch.Tensor:
    """The epoch as a 0-d int64 tensor where it already is: a tensor step counter stays on its
    device (the CUDA kernels read it there), a Python int becomes a host tensor (read by the
    launcher, never copied to the GPU: no synchronisation)."""
    if isinstance(epoch, torch.Tensor):
        return epoch.reshape(()).to(torch.int64)
    return torch.tensor(int(epoch), dtype=torch.int64)


# --------------------------------------------------------------------------------------------------
# The mixed loss as an autograd.Function around the C++ forward/backward
# --------------------------------------------------------------------------------------------------


class _MixedLoss(torch.autograd.Function):
    """``(loss, new_ma2)`` of steps 8-9; differentiable w.r.t. ``logits`` only.

    Without second_reweight the forward writes the gradient for an upstream gradient of 1 while
    each row is in cache (kept on ``ctx``, released by the backward, which rescales it only when
    g != 1); with second_reweight the backward reads the logits once more (saved lse [B])."""

    @staticmethod
    def forward(ctx, logits, target, partner, lam, loss_ma_mixed, epoch, mentornet, rank, decay, burn_in,
                second_reweight):
        fused = ctx.needs_input_grad[0] and not second_reweight
        loss, new_ma, lse, weights, grad = torch.ops.mentormix_cpp.mixed_loss_forward(
            logits, target, partner, lam, loss_ma_mixed, epoch, mentornet, rank, decay, burn_in, second_reweight,
            fused)
        ctx.fused = fused
        ctx.grad_buffer = grad if fused else None
        if not fused:
            ctx.save_for_backward(logits, target, partner, lam, lse, weights)
        ctx.mark_non_differentiable(new_ma)
        return loss, new_ma

    @staticmethod
    def backward(ctx, grad_loss, _grad_ma):
        if not ctx.needs_input_grad[0]:
            return (None,) * 11
        g = grad_loss.detach().to(torch.float32).reshape(())
        if ctx.fused:
            grad = ctx.grad_buffer
            if grad is None:
                raise RuntimeError("mentormix cpu backend: the gradient written by the forward was already used; "
                                   "a second backward through the same mixed loss is not supported")
            ctx.grad_buffer = None
            torch.ops.mentormix_cpp.scale_grad_(grad, g)
        else:
            logits, target, partner, lam, lse, weights = ctx.saved_tensors
            grad = torch.ops.mentormix_cpp.mixed_loss_backward(g, logits, target, partner, lam, lse, weights)
        return (grad,) + (None,) * 10


# --------------------------------------------------------------------------------------------------
# The backend objects
# --------------------------------------------------------------------------------------------------


class CppBackend:
    """The three fused operations on the compiled kernels of one device type."""

    def __init__(self, name: str, device_type: str):
        self.name = name
        self.device_type = device_type

    def supports(self, device: torch.device) -> bool:
        return torch.device(device).type == self.device_type

    def preferred_for(self, device: torch.device) -> bool:
        return self.supports(device)

    def weights_and_sample(self, logits, target, loss_ma, epoch, config, weighting, generator, uniform=None,
                           beta=None):
        if logits.dtype not in _KERNEL_DTYPES:
            return _REFERENCE.weights_and_sample(logits, target, loss_ma, epoch, config, weighting, generator,
                                                 uniform, beta)
        batch, device = logits.shape[0], logits.device
        if (uniform is None) != (beta is None):  # one given: draw the other as the reference does
            uniform = reference.draw_uniform(batch, generator, device) if uniform is None else uniform
            beta = reference.draw_beta(config.mixup_alpha, batch, generator, device) if beta is None else beta
        if uniform is not None:
            uniform, beta = uniform.to(torch.float64), beta.to(torch.float32)
        # Without given draws the kernel draws them from `generator` (csrc/cpu/draws.h).
        loss, v, partner, lam, new_ma = torch.ops.mentormix_cpp.weights_and_sample(
            logits.detach(), target.to(torch.int64), loss_ma.detach().to(torch.float32), _epoch_tensor(epoch, device),
            _weighting_tensor(weighting, device), uniform, beta, generator, config.mixup_alpha,
            reference.percentile_rank(batch, config.percentile), config.loss_ma_decay, config.burn_in_epoch)
        return reference.WeightsAndSample(loss, v, partner, lam, new_ma.to(loss_ma.dtype))

    def mix(self, x, partner, lam):
        if x.dtype not in _KERNEL_DTYPES:
            return _REFERENCE.mix(x, partner, lam)
        return torch.ops.mentormix_cpp.mix(x, partner.to(torch.int64), lam.to(torch.float32))

    def mixed_loss(self, logits, target, partner, lam, loss_ma_mixed, epoch, config, weighting):
        if logits.dtype not in _KERNEL_DTYPES:
            return _REFERENCE.mixed_loss(logits, target, partner, lam, loss_ma_mixed, epoch, config, weighting)
        device, batch = logits.device, logits.shape[0]
        reweight = config.second_reweight
        mentornet = _weighting_tensor(weighting, device) if reweight else torch.empty(0, device=device)
        rank = reference.percentile_rank(batch, config.percentile)
        loss, new_ma = _MixedLoss.apply(
            logits, target.to(torch.int64), partner.to(torch.int64), lam.detach().to(torch.float32),
            loss_ma_mixed.detach().to(torch.float32), _epoch_tensor(epoch, device), mentornet, rank,
            config.loss_ma_decay, config.burn_in_epoch, reweight)
        return loss, new_ma.to(loss_ma_mixed.dtype)


def _register_fakes() -> None:
    """Shapes of the ops' outputs, so torch.compile can trace a step that calls them."""
    lib = "mentormix_cpp::"

    @torch.library.register_fake(lib + "weights_and_sample")
    def _(logits, target, loss_ma, epoch, mentornet, uniform, beta, generator, alpha, rank, decay, burn_in_epoch):
        b = logits.shape[0]
        f32 = dict(dtype=torch.float32, device=logits.device)
        return (logits.new_empty(b, **f32), logits.new_empty(b, **f32),
                logits.new_empty(b, dtype=torch.int64, device=logits.device), logits.new_empty(b, **f32),
                logits.new_empty((), **f32))

    @torch.library.register_fake(lib + "mix")
    def _(x, partner, lam):
        return torch.empty_like(x, memory_format=torch.contiguous_format)

    @torch.library.register_fake(lib + "mixed_loss_forward")
    def _(logits, target, partner, lam, loss_ma_mixed, epoch, mentornet, rank, decay, burn_in_epoch,
          second_reweight, grad_in_forward):
        b = logits.shape[0]
        f32 = dict(dtype=torch.float32, device=logits.device)
        return (logits.new_empty((), **f32), logits.new_empty((), **f32), logits.new_empty(b, **f32),
                logits.new_empty(b if second_reweight else 0, **f32),
                logits.new_empty(logits.shape if grad_in_forward else (0,)))

    @torch.library.register_fake(lib + "mixed_loss_backward")
    def _(grad_output, logits, target, partner, lam, lse, weights):
        return logits.new_empty(logits.shape)

    @torch.library.register_fake(lib + "scale_grad_")
    def _(grad, grad_output):
        return None


_ISA_FEATURES = {"avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx2", "fma", "f16c"),
                 "avx2": ("avx2", "fma", "f16c")}


def _missing_cpu_features(isa: str) -> list[str]:
    """CPU features the kernels were compiled for that this CPU lacks (a copied build would crash
    with an illegal instruction). Linux reads /proc/cpuinfo; elsewhere ATen's capability."""
    needed = _ISA_FEATURES.get(isa, ())
    if not needed:
        return []
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        capability = torch.backends.cpu.get_cpu_capability().lower()
        return [] if capability.startswith(isa) or (isa == "avx2" and capability.startswith("avx512")) else [isa]
    return [flag for flag in needed if flag not in flags]


def _register() -> None:
    info = _build_info()
    try:
        from . import _C  # noqa: F401  (loads the library that defines torch.ops.mentormix_cpp)
    except ImportError as exc:
        reason = f"extension mentormix_fast._C not built or not loadable ({exc}); reinstall with " \
                 f"`pip install --no-build-isolation .`"
        mark_unavailable("cpu", reason)
        mark_unavailable("cuda", reason)
        return
    _register_fakes()
    isa = torch.ops.mentormix_cpp.cpu_isa()
    missing = _missing_cpu_features(isa)
    if missing:
        mark_unavailable("cpu", f"mentormix_fast._C was built for {isa}, this CPU lacks {', '.join(missing)}; "
                                f"rebuild with MENTORMIX_CPU_ISA=default")
    else:
        register_backend(CppBackend("cpu", "cpu"))

    try:
        from . import _C_cuda  # noqa: F401
    except ImportError:
        mark_unavailable("cuda", f"extension mentormix_fast._C_cuda not built ({info.get('cuda', 'unknown reason')})")
        return
    if not torch.cuda.is_available():
        mark_unavailable("cuda", "no CUDA device")
        return
    register_backend(CppBackend("cuda", "cuda"))


_register()
