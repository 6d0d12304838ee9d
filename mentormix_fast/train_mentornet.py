"""Train MentorNet-PD on the predefined curriculum (SPEC §2) and write the package's weights.

    python -m mentormix_fast.train_mentornet [--out PATH] [--seed 0] [--steps 30000]

Target ``v*(l, d, e)`` with ``d = l - ma``: 1 for ``e <= 18``; ``1[d <= 0]`` for ``19 <= e < 90``;
``clip(1 - d, 0, 1)`` for ``e >= 90``. Data: 100,000 rows drawn without replacement from the grid
loss x lossdiff x epoch (label 0), 80% used for training. MSE on ``sigmoid(logit)``, Adam, lr 0.1
decayed x0.9 every 1000 steps (staircase), global-norm clip 5, batch 32; the epoch embedding stays
at its random initial value. Deterministic for a given seed (single-threaded CPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from .mentornet import PD_WEIGHTS_FILE, MentorNet

LOSS_GRID = [i / 10 for i in range(100)] + [float(i) for i in range(10, 30)]
LOSS_DIFF_GRID = [i / 10 for i in range(-50, 50)]
NUM_ROWS = 100_000
TRAIN_FRACTION = 0.8
PHASES = {"burn-in (e <= 18)": (0, 18), "threshold (19 <= e < 90)": (19, 89), "linear (e >= 90)": (90, 99)}


def curriculum_target(loss: torch.Tensor, loss_diff: torch.Tensor, epoch: torch.Tensor) -> torch.Tensor:
    """The predefined curriculum ``v*`` (SPEC §2); all [N] tensors -> [N] float."""
    del loss  # the target depends on the loss only through loss_diff
    step = (loss_diff <= 0).to(loss_diff.dtype)
    linear = (1.0 - loss_diff / 1.0).clamp(0.0, 1.0)
    return torch.where(epoch <= 18, torch.ones_like(loss_diff), torch.where(epoch < 90, step, linear))


def curriculum_rows(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """100,000 (loss, loss_diff, epoch, target) rows drawn without replacement from the grid."""
    g = torch.Generator().manual_seed(seed)
    n_l, n_d, n_e = len(LOSS_GRID), len(LOSS_DIFF_GRID), 100
    flat = torch.randperm(n_l * n_d * n_e, generator=g)[:NUM_ROWS]
    li, rest = flat // (n_d * n_e), flat % (n_d * n_e)
    di, epoch = rest // n_e, rest % n_e
    loss = torch.tensor(LOSS_GRID)[li]
    loss_diff = torch.tensor(LOSS_DIFF_GRID)[di]
    return loss, loss_diff, epoch, curriculum_target(loss, loss_diff, epoch)


def train(seed: int = 0, steps: int = 30_000, batch_size: int = 32, log_every: int = 0) -> tuple[MentorNet, dict]:
    """Train a MentorNet on the curriculum; returns the net and a report (per-phase MAE on held-out rows)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = MentorNet(generator=g)
    loss, loss_diff, epoch, target = curriculum_rows(seed)
    n_train = int(TRAIN_FRACTION * NUM_ROWS)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1000, gamma=0.9)
    order = torch.randint(0, n_train, (steps, batch_size), generator=g)
    for step in range(steps):
        idx = order[step]
        pred = net(loss[idx], loss_diff[idx], epoch[idx])
        mse = torch.mean((pred - target[idx]) ** 2)
        opt.zero_grad(set_to_none=True)
        mse.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()
        sched.step()
        if log_every and step % log_every == 0:
            print(f"step {step:6d}  mse {mse.item():.5f}")
    net.requires_grad_(False)
    return net.eval(), evaluate(net, loss[n_train:], loss_diff[n_train:], epoch[n_train:])


@torch.no_grad()
def evaluate(net: MentorNet, loss, loss_diff, epoch) -> dict:
    """Mean absolute error of ``net`` against ``v*`` per curriculum phase."""
    err = (net(loss, loss_diff, epoch) - curriculum_target(loss, loss_diff, epoch)).abs()
    report = {}
    for name, (lo, hi) in PHASES.items():
        sel = (epoch >= lo) & (epoch <= hi)
        report[name] = float(err[sel].mean())
    report["all"] = float(err.mean())
    return report


def main(argv=None) -> None:
    default_out = Path(__file__).with_name("data") / PD_WEIGHTS_FILE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--log-every", type=int, default=5000)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # bit-for-bit reproducible on any core count
    t0 = time.time()
    net, report = train(args.seed, args.steps, log_every=args.log_every)
    payload = {
        "about": "MentorNet-PD trained on the predefined curriculum (SPEC §2) by mentormix_fast.train_mentornet",
        "seed": args.seed,
        "steps": args.steps,
        "heldout_mae_per_phase": report,
        "parameters": net.to_json_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"trained in {time.time() - t0:.1f} s; held-out MAE per phase: {json.dumps(report, indent=1)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
