"""How the Triton ops are registered with torch.library, and how their launchers launch.

On a GPU an op is a ``torch.library.triton_op``: ``torch.compile`` traces through its launcher and
sees the Triton kernels themselves (``wrap_triton``), and the launcher traced on fake tensors is
the op's fake implementation, so no op needs a hand-written one.

Under ``TRITON_INTERPRET=1`` (CPU tensors, for tests) a kernel is an interpreted Python function
that neither ``wrap_triton`` nor Inductor can trace. There the op is a ``torch.library.custom_op``
(opaque to the compiler) whose fake implementation is the same launcher run with every launch
skipped: the launcher only allocates its outputs then, which is all a fake must do.

Launchers call ``wrap_triton(kernel)[grid](...)`` from this module, and record every launch they
make when :func:`recording` is on (``aot_check`` compiles exactly what the launchers launch).
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch

_local = threading.local()


def interpreting() -> bool:
    """True when Triton runs kernels in its Python interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class _Recorded:
    """Stands in for a kernel while launches are skipped or recorded: ``[grid](*args, **kwargs)``."""

    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if self.log is not None:
                self.log.append((self.kernel, grid, args, kwargs))

        return launch


def wrap_triton(kernel):
    """``torch.library.wrap_triton(kernel)``, or a launch that does nothing (fake implementations
    under the interpreter; :func:`recording`)."""
    if getattr(_local, "skip", False):
        return _Recorded(kernel, getattr(_local, "log", None))
    return torch.library.wrap_triton(kernel)


@contextlib.contextmanager
def recording():
    """Inside the block launchers launch nothing and append ``(kernel, grid, args, kwargs)`` of
    every launch to the yielded list."""
    log: list = []
    previous = getattr(_local, "skip", False), getattr(_local, "log", None)
    _local.skip, _local.log = True, log
    try:
        yield log
    finally:
        _local.skip, _local.log = previous


def _without_launches(fn):
    def fake(*args, **kwargs):
        previous = getattr(_local, "skip", False), getattr(_local, "log", None)
        _local.skip, _local.log = True, None
        try:
            return fn(*args, **kwargs)
        finally:
            _local.skip, _local.log = previous

    return fake


def library_op(name: str, mutates_args=()):
    """Register the decorated launcher as the op ``mentormix_triton::<name>`` (see the module
    docstring); the schema comes from its type annotations."""

    def register(fn):
        qualname = f"mentormix_triton::{name}"
        if interpreting():
            op = torch.library.custom_op(qualname, fn, mutates_args=mutates_args)
            op.register_fake(_without_launches(fn))
            return op
        return torch.library.triton_op(qualname, fn, mutates_args=mutates_args)

    return register


def device_of(t: torch.Tensor):
    """A context that makes ``t``'s GPU the current one while a launcher launches (the kernels run
    on the current device, as the C++ ops do with a ``CUDAGuard``)."""
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def host_or_device_step(step: torch.Tensor, like: torch.Tensor):
    """``(step_ptr, step_value)`` for a kernel: a step on the logits' device is read in the kernel;
    a CPU scalar step with GPU logits is read here on the host (no synchronisation)."""
    if step.device != like.device and step.device.type == "cpu":
        return None, int(step)
    return step.reshape(1), 0
