"""Compile every kernel variant the launchers launch, for a GPU target, without a GPU.

    python -m mentormix_fast.kernels.aot_check [--arch 90] [--jobs N] [--list]

The interpreter accepts programs the GPU compiler rejects (types, layouts, histogram lowering), so
this compiles each variant to a cubin (default sm_90). The variants are not typed by hand: the
ops' launchers run over a matrix of calls on meta tensors with launches recorded instead of made
(``_library.recording``), and each distinct (kernel, argument types, constexprs, warps) is
compiled once, its types read off the recorded arguments (tensors: pointers of their dtype; None:
a constexpr None; ints: i32/i64, or a constexpr 1 where Triton specialises on 1). By default each
path-selecting argument takes each of its values once (``--all``: every combination). Must run
WITHOUT ``TRITON_INTERPRET=1``. Prints one line per variant; exits 1 on the first failure.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time

import torch

_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.float64: "fp64",
           torch.int64: "i64", torch.int32: "i32", torch.uint8: "u8", torch.bool: "i1"}


def _calls(full: bool = False):
    """Closures that call every op over the paths its launcher can take (meta tensors): every value
    of each argument that selects a code path, varied one at a time from a base configuration
    (``full``: their whole product), and every logits dtype x tiling of the row kernels."""
    from . import ce, mix, mixed_loss, plan

    meta = dict(device="meta")
    f32 = dict(dtype=torch.float32, **meta)
    i64 = dict(dtype=torch.int64, **meta)
    mn_full = torch.empty(2072, **f32)
    mn_none = torch.empty(0, **f32)
    step_device = torch.empty((), **i64)
    step_host = torch.tensor(37)

    def logits(b, k, dtype):
        return torch.empty(b, k, dtype=dtype, **meta)

    def plan_call(b, k, dtype, mn, step, pool, draws):
        alpha = {"explicit": 8.0, "kernel": 8.0, "boost": 0.3, "none": 0.0}[draws]
        u = torch.empty(b, dtype=torch.float64, **meta) if draws == "explicit" else None
        beta = torch.empty(b, **f32) if draws == "explicit" else None
        pool_t = None if pool == 0 else torch.empty(pool, **f32)
        return lambda: plan.plan(logits(b, k, dtype), torch.empty(b, **i64), torch.empty((), **f32),
                                 torch.empty(2, **i64), mn, step, pool_t, u, beta, 1000, 0.7, 0.5, 10, alpha)

    def loss_call(b, k, dtype, mn, step, pool, mode, steps_out=True):
        reweight = mode == "reweight"
        given = torch.empty(b, **f32) if mode == "given" else None
        pool_t = None if pool == 0 else torch.empty(pool, **f32)
        return lambda: mixed_loss.mixed_loss(
            logits(b, k, dtype), torch.empty(b, **i64), torch.empty(b, **i64), torch.empty(b, **f32), given,
            torch.empty((), **f32) if reweight else None, torch.empty((), **i64) if steps_out else None, mn, step,
            pool_t, 1000, 0.7, 0.5, 10, reweight)

    calls = []
    tiles = [(64, 10), (64, 100), (64, 1000), (2, 32000)]  # small-K many-row tiles to one 4096-wide row
    for dtype, (b, k) in itertools.product((torch.float32, torch.bfloat16, torch.float16), tiles):
        z = logits(b, k, dtype)
        y, p, lam = torch.empty(b, **i64), torch.empty(b, **i64), torch.empty(b, **f32)
        calls.append(lambda z=z, y=y: ce.ce(z, y, None, None))
        calls.append(lambda z=z, y=y, p=p, lam=lam: ce.ce(z, y, p, lam))
        lse = torch.empty(b, **f32)
        calls.append(lambda z=z, y=y, p=p, lam=lam, lse=lse: mixed_loss.mixed_loss_backward(
            torch.empty((), **f32), z, y, p, lam, lse, lse))
        calls.append(lambda z=z, y=y, p=p, lam=lam, lse=lse: mixed_loss.mixed_loss_backward(
            torch.empty((), **f32), z, y, p, lam, lse, None))
        # The one-program kernels with the CE pass fused (B * K small), on the usual configuration.
        if b * k <= plan.FUSE_CE_MAX:
            calls.append(plan_call(b, k, dtype, mn_full, step_device, 0, "kernel"))
            calls.append(loss_call(b, k, dtype, mn_full, step_device, 0, "reweight"))
    # The O(B) kernels on losses from a separate CE pass (B * K large), one program and many.
    big_pool = plan.SMALL_B_MAX + 7
    plan_axes = [(mn_full, mn_none), (step_device, step_host), (0, 50, big_pool), ("kernel", "explicit", "boost",
                                                                                     "none")]
    loss_axes = [(mn_full, mn_none), (step_device, step_host), (0, 50, big_pool), ("reweight", "given", "none"),
                 (True, False)]
    for b in (100, plan.SMALL_B_MAX + 1):
        for args in _configurations(plan_axes, full):
            calls.append(plan_call(b, 1000, torch.bfloat16, *args))
        for args in _configurations(loss_axes, full):
            if args[2] and args[3] != "reweight":
                continue
            calls.append(loss_call(b, 1000, torch.bfloat16, *args))
    # B = 1 (Triton specialises integer arguments equal to 1).
    calls.append(plan_call(1, 10, torch.float32, mn_full, step_device, 0, "kernel"))
    calls.append(loss_call(1, 10, torch.float32, mn_full, step_device, 0, "reweight"))
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for shape in ((16, 3, 8, 8), (1,), (5, 1)):
            x = torch.empty(shape, dtype=dtype, **meta)
            calls.append(lambda x=x: mix.mix(x, torch.empty(x.shape[0], **i64), torch.empty(x.shape[0], **f32)))
    return calls


def _configurations(axes, full: bool):
    """The whole product of ``axes`` (tuples of values, the first one the base), or the base and
    every value of each axis with the others at their base."""
    if full:
        return list(itertools.product(*axes))
    base = [axis[0] for axis in axes]
    out = [tuple(base)]
    for i, axis in enumerate(axes):
        for value in axis[1:]:
            out.append(tuple(base[:i] + [value] + base[i + 1:]))
    return out


def _arg_type(param, value):
    """(signature type, constexpr value or None) of one recorded argument."""
    if param.is_constexpr or value is None:
        return "constexpr", value
    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[value.dtype], None
    if isinstance(value, bool):
        return "i1", None
    if isinstance(value, int):
        if value == 1 and not param.do_not_specialize:
            return "constexpr", 1
        return ("i32" if -(2**31) <= value < 2**31 else "i64"), None
    if isinstance(value, float):
        return "fp32", None
    raise TypeError(f"{param.name}: cannot type {value!r}")


def variants(full: bool = False):
    """(name, kernel, signature, constexprs, num_warps) of every distinct launch of :func:`_calls`."""
    from . import _library

    seen, out = set(), []
    with _library.recording() as log:
        for call in _calls(full):
            call()
    for kernel, _grid, args, kwargs in log:
        kwargs = dict(kwargs)
        warps = kwargs.pop("num_warps", 4)
        bound = dict(zip(kernel.arg_names, args, strict=False)) | kwargs  # the rest are keywords
        sig, constexprs = {}, {}
        for param in kernel.params:
            typ, value = _arg_type(param, bound[param.name])
            sig[param.name] = typ
            if typ == "constexpr":
                constexprs[param.name] = value
        key = (kernel.fn.__name__, tuple(sig.items()), repr(sorted(constexprs.items(), key=lambda kv: kv[0])), warps)
        if key in seen:
            continue
        seen.add(key)
        flags = ", ".join(f"{k}={v}" for k, v in constexprs.items())
        types = ", ".join(v for v in sig.values() if v.startswith("*"))
        out.append((f"{kernel.fn.__name__} [{types}] ({flags}) warps={warps}", kernel, sig, constexprs, warps))
    return out


def _compile(item, arch):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, kernel, sig, constexprs, warps = item
    t0 = time.perf_counter()
    try:
        compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs),
                                  target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
    except Exception as exc:  # reported with the variant's name
        return False, f"FAIL {name}: {type(exc).__name__}: {exc}"
    del compiled
    return True, f"ok   {name} ({time.perf_counter() - t0:.1f} s)"


_ITEMS: list = []


def _compile_index(args):
    index, arch = args
    return _compile(_ITEMS[index], arch)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mentormix_fast.kernels.aot_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default: 90, sm_90)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compile in this many processes")
    ap.add_argument("--all", action="store_true",
                    help="the whole product of the path-selecting arguments, not one at a time")
    ap.add_argument("--list", action="store_true", help="only list the variants")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("aot_check: unset TRITON_INTERPRET (the kernels must be JIT functions)", file=sys.stderr)
        return 2
    _ITEMS[:] = variants(args.all)
    print(f"{len(_ITEMS)} kernel variants", flush=True)
    if args.list:
        for item in _ITEMS:
            print(item[0])
        return 0
    work = [(i, args.arch) for i in range(len(_ITEMS))]
    if args.jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
            results = pool.imap(_compile_index, work)
            return _report(results)
    return _report(map(_compile_index, work))


def _report(results) -> int:
    for ok, line in results:
        print(line, flush=True)
        if not ok:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
