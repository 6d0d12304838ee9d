"""Compile every kernel variant for a GPU target without a GPU (``python -m mentormix_fast.kernels.aot_check``).

The CPU interpreter accepts programs the GPU compiler rejects (types, layouts, histogram lowering),
so CI without a GPU compiles each kernel to a cubin for sm_90 (H100) here. Must run WITHOUT
``TRITON_INTERPRET=1`` (the kernels must be JIT functions). Prints one line per variant; exits 1
on the first failure.
"""

from __future__ import annotations

import itertools
import os
import sys
import time


def variants():
    """(name, kernel, signature, constexprs, num_warps) for every launch configuration we use."""
    import triton

    from . import _shared, mix, mixed_loss
    from . import weights_and_sample as ws

    f32, i64, i32 = "*fp32", "*i64", "i32"
    out = []
    tilings = [(64, 16, 8), (8, 128, 8), (1, 1024, 4), (1, 4096, 8)]  # row_tiling() for K = 10, 100, 1000, 32000
    for dt, mixed, (rows, bk, nw) in itertools.product(["fp32", "bf16", "fp16"], [False, True], tilings):
        sig = dict(z_ptr=f"*{dt}", stride_z=i32, target_ptr=i64, partner_ptr=i64, lam_ptr=f32, loss_ptr=f32,
                   lse_ptr=f32, B=i32, K=i32, MIXED="constexpr", ROWS="constexpr", BLOCK_K="constexpr")
        out.append((f"ce_rows {dt} mixed={mixed} {rows}x{bk}", _shared.ce_rows_kernel, sig,
                    dict(MIXED=mixed, ROWS=rows, BLOCK_K=bk), nw))
    for p in range(4):
        sig = dict(x_ptr=f32, n=i32, k=i32, hist_ptr="*i32", PASS="constexpr", BLOCK="constexpr")
        out.append((f"radix_hist pass {p}", _shared.radix_hist_kernel, sig, dict(PASS=p, BLOCK=1024), 4))
    plan_sig = dict(loss_ptr=f32, pool_ptr=f32, ma_ptr=f32, params_ptr=f32, beta_ptr=f32, uniform_ptr="*fp64",
                    rng_ptr=i64, hist_ptr="*i32", v_ptr=f32, lam_ptr=f32, cdf_ptr=f32, bsum_ptr=f32, partner_ptr=i64,
                    ma_out_ptr=f32, n=i32, n_pool=i32, k=i32, decay="fp32", span=i32, n_iter=i32, gamma_d="fp32",
                    gamma_c="fp32", inv_alpha="fp32", clock_ptr=i64, clock_mul=i32, clock_div=i32, z_ptr=f32,
                    stride_z=i32,
                    target_ptr=i64, num_classes=i32, MODE="constexpr", MIX="constexpr", PRESELECTED="constexpr",
                    DRAW="constexpr", BOOST="constexpr", ROUNDS="constexpr", SEARCH="constexpr", EPOCH="constexpr",
                    FUSE_CE="constexpr", ROWS="constexpr", BLOCK_K="constexpr", BLOCK="constexpr")
    unfused = dict(FUSE_CE=False, ROWS=1, BLOCK_K=1)
    draws = [(False, False), (True, False), (True, True)]  # (DRAW, BOOST): explicit draws, in-kernel, alpha < 1
    for mode, mixf, pre, block, (draw, boost) in itertools.product([0, 1], [False, True], [False, True],
                                                                     [2048, 1024], draws):
        if draw and not mixf:
            continue
        search = mixf and block == 2048  # one program (small B): the partner search is in the plan kernel
        out.append((f"plan mode={mode} mix={mixf} pre={pre} block={block} draw={draw} boost={boost}",
                    ws._plan_kernel, plan_sig, dict(MODE=mode, MIX=mixf, PRESELECTED=pre, DRAW=draw, BOOST=boost,
                                                    ROUNDS=ws.GAMMA_ROUNDS, SEARCH=search, EPOCH=mode == 1 and draw,
                                                    BLOCK=block, **unfused), 8))
    # Small B * K: the plan program also does the CE pass (row_tiling() tiles for K = 10, 100, 1000).
    for dt, mode, (rows, bk, _) in itertools.product(["fp32", "bf16", "fp16"], [0, 1], tilings[:3]):
        out.append((f"plan fused-ce {dt} mode={mode} {rows}x{bk}", ws._plan_kernel, dict(plan_sig, z_ptr=f"*{dt}"),
                    dict(MODE=mode, MIX=True, PRESELECTED=False, DRAW=True, BOOST=False, ROUNDS=ws.GAMMA_ROUNDS,
                         SEARCH=True, EPOCH=True, FUSE_CE=True, ROWS=rows, BLOCK_K=bk, BLOCK=2048), 8))
    out.append(("block_scan", ws._block_scan_kernel, dict(bsum_ptr=f32, g=i32, BLOCK="constexpr"),
                dict(BLOCK=1024), 4))
    for draw in (False, True):
        out.append((f"partner draw={draw}", ws._partner_kernel,
                    dict(cdf_ptr=f32, bincl_ptr=f32, uniform_ptr="*fp64", rng_ptr=i64, partner_ptr=i64, n=i32,
                         g=i32, span=i32, n_iter=i32, DRAW="constexpr", ROUNDS="constexpr", BLOCK="constexpr"),
                    dict(DRAW=draw, ROUNDS=ws.GAMMA_ROUNDS, BLOCK=1024), 4))
    for dt in ["fp32", "bf16", "fp16", "fp64"]:
        compute = triton.language.float64 if dt == "fp64" else triton.language.float32
        out.append((f"mix {dt}", mix._mix_kernel,
                    dict(x_ptr=f"*{dt}", partner_ptr=i64, lam_ptr=f32, out_ptr=f"*{dt}", total="i64", D=i32,
                         COMPUTE="constexpr", BLOCK="constexpr"), dict(COMPUTE=compute, BLOCK=1024), 4))
    for mode, rew, pre, single in itertools.product([0, 1], [False, True], [False, True], [False, True]):
        sig = dict(m_ptr=f32, ma_ptr=f32, params_ptr=f32, hist_ptr="*i32", w_ptr=f32, ma_out_ptr=f32, part_ptr=f32,
                   loss_ptr=f32, n=i32, k=i32, decay="fp32", span=i32, clock_ptr=i64, clock_mul=i32, clock_div=i32,
                   steps_out_ptr=i64, step_next="i64", z_ptr=f32, stride_z=i32, target_ptr=i64, partner_ptr=i64,
                   lam_ptr=f32, lse_ptr=f32, num_classes=i32, MODE="constexpr", REWEIGHT="constexpr",
                   PRESELECTED="constexpr", SINGLE="constexpr", EPOCH="constexpr", STEP_OUT="constexpr",
                   FUSE_CE="constexpr", ROWS="constexpr", BLOCK_K="constexpr", BLOCK="constexpr")
        reduce_sig = sig
        for epoch in (False, True) if rew else (False,):
            # The module's step counter: from the clock (tensor step) or a given value (int step).
            step_out = (2 if epoch else 1) if single else 0
            out.append((f"reduce mode={mode} reweight={rew} pre={pre} single={single} epoch={epoch}",
                        mixed_loss._reduce_kernel, sig,
                        dict(MODE=mode, REWEIGHT=rew, PRESELECTED=pre, SINGLE=single, EPOCH=epoch, STEP_OUT=step_out,
                             BLOCK=2048, **unfused), 8))
    # Small B * K: the reduce program also does the mixed-CE pass.
    for dt, mode, rew, (rows, bk, _) in itertools.product(["fp32", "bf16", "fp16"], [0, 1], [False, True],
                                                          tilings[:3]):
        out.append((f"reduce fused-ce {dt} mode={mode} reweight={rew} {rows}x{bk}", mixed_loss._reduce_kernel,
                    dict(reduce_sig, z_ptr=f"*{dt}"),
                    dict(MODE=mode, REWEIGHT=rew, PRESELECTED=False, SINGLE=True, EPOCH=rew, STEP_OUT=2 if rew else 0,
                         FUSE_CE=True, ROWS=rows, BLOCK_K=bk, BLOCK=2048), 8))
    out.append(("sum", mixed_loss._sum_kernel, dict(part_ptr=f32, loss_ptr=f32, g=i32, n=i32, BLOCK="constexpr"),
                dict(BLOCK=1024), 4))
    for dt, has_w, (rows, bk, nw) in itertools.product(["fp32", "bf16", "fp16"], [False, True], tilings):
        sig = dict(z_ptr=f"*{dt}", stride_z=i32, lse_ptr=f32, target_ptr=i64, partner_ptr=i64, lam_ptr=f32,
                   w_ptr=f32, g_ptr=f32, grad_ptr=f"*{dt}", stride_g=i32, B=i32, K=i32, div="fp32",
                   HAS_W="constexpr", ROWS="constexpr", BLOCK_K="constexpr")
        out.append((f"grad {dt} has_w={has_w} {rows}x{bk}", mixed_loss._grad_kernel, sig,
                    dict(HAS_W=has_w, ROWS=rows, BLOCK_K=bk), nw))
    # The JIT turns integer arguments equal to 1 into constants (B = 1, one block, one iteration):
    # compile those specialisations too.
    one = dict(n=1, n_pool=1, span=1)
    sig = dict(plan_sig, n="constexpr", n_pool="constexpr", span="constexpr", n_iter="constexpr",
               z_ptr="*bf16")
    for draw in (False, True):
        out.append((f"plan B=1 draw={draw}", ws._plan_kernel, sig,
                    dict(one, n_iter=1, MODE=1, MIX=True, PRESELECTED=False, DRAW=draw, BOOST=False,
                         ROUNDS=ws.GAMMA_ROUNDS, SEARCH=True, EPOCH=draw, FUSE_CE=draw, ROWS=64 if draw else 1,
                         BLOCK_K=16 if draw else 1, BLOCK=2048), 8))
        out.append((f"partner B=1 draw={draw}", ws._partner_kernel,
                    dict(cdf_ptr=f32, bincl_ptr=f32, uniform_ptr="*fp64", rng_ptr=i64, partner_ptr=i64,
                         n="constexpr", g="constexpr", span="constexpr", n_iter="constexpr", DRAW="constexpr",
                         ROUNDS="constexpr", BLOCK="constexpr"),
                    dict(n=1, g=1, span=1, n_iter=1, DRAW=draw, ROUNDS=ws.GAMMA_ROUNDS, BLOCK=1024), 4))
    sig = dict(reduce_sig, n="constexpr", span="constexpr", z_ptr="*bf16")
    out.append(("reduce B=1", mixed_loss._reduce_kernel, sig,
                dict(n=1, span=1, MODE=1, REWEIGHT=True, PRESELECTED=False, SINGLE=True, EPOCH=True, STEP_OUT=2,
                     FUSE_CE=True, ROWS=64, BLOCK_K=16, BLOCK=2048), 8))
    out.append(("mix D=1", mix._mix_kernel,
                dict(x_ptr="*fp32", partner_ptr=i64, lam_ptr=f32, out_ptr="*fp32", total="constexpr", D="constexpr",
                     COMPUTE="constexpr", BLOCK="constexpr"),
                dict(total=1, D=1, COMPUTE=triton.language.float32, BLOCK=1024), 4))
    sig = dict(z_ptr="*bf16", stride_z=i32, target_ptr=i64, partner_ptr=i64, lam_ptr=f32, loss_ptr=f32,
               lse_ptr=f32, B="constexpr", K=i32, MIXED="constexpr", ROWS="constexpr", BLOCK_K="constexpr")
    out.append(("ce_rows B=1", _shared.ce_rows_kernel, sig, dict(B=1, MIXED=True, ROWS=64, BLOCK_K=16), 8))
    sig = dict(z_ptr="*bf16", stride_z=i32, lse_ptr=f32, target_ptr=i64, partner_ptr=i64, lam_ptr=f32,
               w_ptr=f32, g_ptr=f32, grad_ptr="*bf16", stride_g=i32, B="constexpr", K=i32, div="fp32",
               HAS_W="constexpr", ROWS="constexpr", BLOCK_K="constexpr")
    out.append(("grad B=1", mixed_loss._grad_kernel, sig, dict(B=1, HAS_W=True, ROWS=64, BLOCK_K=16), 8))
    return out


def main(arch: int = 90) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("aot_check: unset TRITON_INTERPRET (the kernels must be JIT functions)", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    for name, kernel, sig, constexprs, warps in variants():
        t0 = time.perf_counter()
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs), target=target,
                                      options={"num_warps": warps})
        except Exception as exc:
            print(f"FAIL {name}: {type(exc).__name__}: {exc}")
            return 1
        spills = getattr(compiled, "n_spills", None)
        print(f"ok   {name} ({time.perf_counter() - t0:.1f} s, regs {getattr(compiled, 'n_regs', '?')}, "
              f"spills {spills})")
    return 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 90))
