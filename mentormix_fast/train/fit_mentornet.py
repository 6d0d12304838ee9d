"""Fit MentorNet-PD to the predefined curriculum (SPEC §2) and write the package's weights.

    python -m mentormix_fast.train.fit_mentornet [--out PATH] [--seed 0] [--steps 12000]

Target ``v*(l, d, e)`` with ``d = l - ma``: 1 for ``e <= 18``; ``1[d <= 0]`` for ``19 <= e < 90``;
``clip(1 - d, 0, 1)`` for ``e >= 90``. The network is the release's (``mentornet.MentorNet``,
unchanged); the fit differs from the release's:

* every step sees all 100 epochs, each with the 100 loss_diff values of the grid plus 32 drawn
  from U[-5, 5] and 128 from U[-0.5, 1.5] (where the curriculum has its kinks);
* the loss is the squared error of the sigmoid output, weighted 5 : 1 : 10 per epoch in the three
  phases (19, 71 and 10 of the 100 epochs; the first and last need saturated or exact outputs),
  and within a phase by ``1 + error EMA of the epoch / mean over the phase`` so that no epoch is
  given up (the epoch embedding is random: a few epochs of one phase resemble another phase's);
* the target depends on the loss only through loss_diff, so the loss row of both LSTM kernels is
  set to 0 and kept there: the fitted network gives the same ``v`` for every loss;
* the epoch embedding stays at its random initial value, as in the release;
* Adam, learning rate 0.03 with a cosine decay to 1e-4 over 12,000 steps, global-norm clip 5.

Deterministic for a given seed on a CPU (``main`` runs single-threaded). The written JSON records
the recipe and the error per region on the full grid (loss x loss_diff x epoch, 1.2M points).
Self-contained: imports only ``mentormix_fast.mentornet`` and torch.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from mentormix_fast.mentornet import NUM_EPOCHS, PD_WEIGHTS_FILE, MentorNet

LOSS_GRID = [i / 10 for i in range(100)] + [float(i) for i in range(10, 30)]
LOSS_DIFF_GRID = [i / 10 for i in range(-50, 50)]
# Regions of the full grid and the bounds (mean and maximum absolute error) the shipped weights meet.
# The threshold phase leaves out |loss_diff| <= 0.15: no smooth network steps from 1 to 0 between
# the grid points 0 and 0.1 exactly.
REGIONS = ("e <= 18", "19 <= e < 90, |loss_diff| > 0.15", "e >= 90")
BOUNDS = {REGIONS[0]: (0.005, 0.05), REGIONS[1]: (0.005, 0.15), REGIONS[2]: (0.01, 0.10)}

DEFAULTS = {
    "seed": 0,
    "steps": 12_000,
    "lr": 0.03,
    "lr_end": 1e-4,
    "clip_norm": 5.0,
    "uniform_samples": 32,  # loss_diff ~ U[-5, 5] per step, besides the 100 grid values
    "kink_samples": 128,  # loss_diff ~ U[-0.5, 1.5] per step
    "phase_weights": (5.0, 1.0, 10.0),  # e <= 18, 19 <= e < 90, e >= 90
    "epoch_focus": 1.0,  # epoch weight x (1 + epoch_focus * error EMA / its phase's mean) / (1 + epoch_focus)
    "focus_decay": 0.99,
}


def curriculum_target(loss: torch.Tensor, loss_diff: torch.Tensor, epoch: torch.Tensor) -> torch.Tensor:
    """The predefined curriculum ``v*`` (SPEC §2); broadcastable tensors -> float."""
    del loss  # the target depends on the loss only through loss_diff
    step = (loss_diff <= 0).to(loss_diff.dtype)
    linear = (1.0 - loss_diff).clamp(0.0, 1.0)
    one = torch.ones_like(step)
    return torch.where(epoch <= 18, one, torch.where(epoch < 90, step, linear))


def full_grid() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (loss, loss_diff, epoch) of the grid: three [120 * 100 * 100] tensors."""
    loss, diff = torch.tensor(LOSS_GRID), torch.tensor(LOSS_DIFF_GRID)
    n_l, n_d = len(LOSS_GRID), len(LOSS_DIFF_GRID)
    return (loss.repeat_interleave(n_d * NUM_EPOCHS), diff.repeat_interleave(NUM_EPOCHS).repeat(n_l),
            torch.arange(NUM_EPOCHS).repeat(n_l * n_d))


@torch.no_grad()
def evaluate(net: MentorNet) -> dict:
    """Mean and maximum absolute error of ``net`` against ``v*`` per region of the full grid."""
    loss, diff, epoch = full_grid()
    err = (net(loss, diff, epoch) - curriculum_target(loss, diff, epoch)).abs()
    masks = {REGIONS[0]: epoch <= 18, REGIONS[1]: (epoch >= 19) & (epoch < 90) & (diff.abs() > 0.15),
             REGIONS[2]: epoch >= 90}
    return {name: {"mae": float(err[m].mean()), "max": float(err[m].max())} for name, m in masks.items()}


def epoch_logits(net: MentorNet, loss_diff: torch.Tensor) -> torch.Tensor:
    """``net.logit`` for each loss_diff [N] at every epoch, [N, 100], for a net whose LSTM kernels
    have a zero loss row (the loss is then irrelevant). The [20] per-epoch input of the hidden layer
    is computed once per epoch instead of once per point."""
    x = torch.stack([torch.zeros_like(loss_diff), loss_diff], dim=1)
    c_fw = net._cell_state(x, net.lstm_fw_kernel, net.lstm_fw_bias)
    c_bw = net._cell_state(x, net.lstm_bw_kernel, net.lstm_bw_bias)
    w1 = net.fc1_weight
    base = net.label_embedding[0] @ w1[0:2] + net.epoch_embedding @ w1[2:7] + net.fc1_bias  # [100, 20]
    cells = c_fw[:, None] * w1[7] + c_bw[:, None] * w1[8]  # [N, 20]
    h = torch.tanh(cells[:, None, :] + base[None])  # [N, 100, 20]
    return (h @ (net.fc2_weight + net.fc2_bias)).squeeze(-1)


def init_net(seed: int) -> MentorNet:
    """The release's initialisers drawn from ``seed``, then the loss row of both LSTM kernels zeroed."""
    net = MentorNet(generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        net.lstm_fw_kernel[0].zero_()
        net.lstm_bw_kernel[0].zero_()
    return net


def train(seed: int = DEFAULTS["seed"], steps: int = DEFAULTS["steps"], log_every: int = 0, **overrides):
    """Fit a MentorNet to the curriculum; returns the frozen net and its recipe (a dict)."""
    recipe = {**DEFAULTS, **overrides, "seed": seed, "steps": steps}
    g = torch.Generator().manual_seed(seed)
    net = init_net(seed)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=recipe["lr"], foreach=True)
    epoch = torch.arange(NUM_EPOCHS)
    phase = (epoch >= 19).long() + (epoch >= 90).long()
    weight = torch.tensor(recipe["phase_weights"], dtype=torch.float32)[phase]
    weight = weight / weight.mean()
    grid = torch.tensor(LOSS_DIFF_GRID)
    lr0, lr1, focus, decay = recipe["lr"], recipe["lr_end"], recipe["epoch_focus"], recipe["focus_decay"]
    ema = None
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr1 + 0.5 * (lr0 - lr1) * (1 + math.cos(math.pi * step / steps))
        diff = torch.cat([grid, torch.rand(recipe["uniform_samples"], generator=g) * 10 - 5,
                          torch.rand(recipe["kink_samples"], generator=g) * 2 - 0.5])
        target = curriculum_target(None, diff[:, None], epoch[None])
        sq = (torch.sigmoid(epoch_logits(net, diff)) - target) ** 2  # [N, 100]
        # Per-epoch error (leaving out the threshold phase's step band), smoothed over steps: an epoch
        # that does worse than the others of its phase weighs more, the phase's total stays put.
        band = (phase[None] == 1) & (diff[:, None].abs() <= 0.15)
        per_epoch = torch.where(band, 0.0, sq.detach()).sum(0) / (~band).sum(0)
        ema = per_epoch if ema is None else decay * ema + (1 - decay) * per_epoch
        phase_mean = torch.stack([ema[:19].mean(), ema[19:90].mean(), ema[90:].mean()])[phase]
        mse = (weight * (1 + focus * ema / phase_mean) / (1 + focus) * sq).mean()
        opt.zero_grad(set_to_none=True)
        mse.backward()
        net.lstm_fw_kernel.grad[0] = 0  # the loss row stays 0 (Adam moves nothing with zero gradients)
        net.lstm_bw_kernel.grad[0] = 0
        torch.nn.utils.clip_grad_norm_(params, recipe["clip_norm"])
        opt.step()
        if log_every and step % log_every == 0:
            print(f"step {step:6d}  weighted mse {mse.item():.6f}", flush=True)
    net.requires_grad_(False)
    recipe["phase_weights"] = list(recipe["phase_weights"])
    return net.eval(), recipe


def main(argv=None) -> None:
    default_out = Path(__file__).resolve().parent.parent / "data" / PD_WEIGHTS_FILE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    ap.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    ap.add_argument("--log-every", type=int, default=2000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # bit-for-bit reproducible on any core count
    t0 = time.time()
    net, recipe = train(args.seed, args.steps, log_every=args.log_every)
    fit_s = time.time() - t0
    table = evaluate(net)
    payload = {
        "about": "MentorNet-PD fitted to the predefined curriculum (SPEC §2) by mentormix_fast.train.fit_mentornet",
        "recipe": recipe,
        "grid": {"loss": "0, 0.1, ..., 9.9, 10, 11, ..., 29", "loss_diff": "-5, -4.9, ..., 4.9", "epoch": "0..99"},
        "error_per_region": table,
        "parameters": net.to_json_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"fitted in {fit_s:.1f} s; absolute error on the full grid per region:")
    for name, row in table.items():
        print(f"  {name:34s} mean {row['mae']:.5f}  max {row['max']:.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
