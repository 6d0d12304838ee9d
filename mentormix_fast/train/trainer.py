"""The training loop of the release's CIFAR program (SPEC §3): a student trained with MentorMix on noisy labels.

:class:`Trainer` holds one rank's run (its flags come from :mod:`mentormix_fast.train.cli`).
One step t (0-based) of ``--max-steps`` T:
    idx  = the next B indices of a seeded per-epoch permutation (rank r of W takes the r-th B of each
           global batch of B*W)
    x    = the batch source's input of idx (:mod:`mentormix_fast.train.batches`): augment(images[idx])
           (CIFAR: pad/crop/flip/colour, [-1, 1]; digits: as stored), or the image files of idx decoded
           and augmented by DataLoader workers (filelist/imagefolder)
    loss = MentorMix: first pass (no grad, BN stats frozen) -> plan -> mix -> second pass -> mixed loss
    SGD(momentum 0.9), lr = lr0 * 0.9 ** floor(t / (num_epochs_per_decay * N / (B * W)))
    (times --backbone-lr-mult for every parameter but the classifier head);
    weight decay 2e-4 on conv/FC kernels (none with --second-reweight, as in the release);
    EMA of the weights, d_t = min(0.9999, (1 + t) / (10 + t)).

Every draw of step t comes from generators seeded by (seed, t, rank), and the data order depends only on
(seed, t), so a run resumed from a checkpoint replays exactly what the uninterrupted run would have done.
Outputs in ``--out-dir``: ckpt-<step>.pt, train_log.csv, test_log.csv, weights.csv (per-example weights with
a clean/noisy flag, for the histogram), tb/ (TensorBoard), summary.json.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from mentormix_fast import MentorMix, frozen_batchnorm_stats
from mentormix_fast.distributed import all_gather_cat

from . import checkpoint as ckpt
from . import world
from .batches import make_source
from .data import dataset_options, load_dataset
from .ema import WeightEMA
from .evaluate import accuracies
from .finetune import freeze_batchnorm, param_groups
from .labels import describe, training_labels
from .logs import CsvLog, TensorBoardLog
from .models import build_model, count_parameters, decay_parameters, head_parameter_names, load_pretrained
from .seeds import derived_seed

# Flags that must not change when a run is resumed.
RESUME_KEYS = ("dataset", "noise_rate", "noise_kind", "noise_seed", "model", "batch_size", "max_steps", "seed",
               "mixup_alpha", "percentile", "second_reweight", "burn_in_epoch", "weighting", "global_percentile",
               "lr", "lr_decay_factor", "num_epochs_per_decay", "momentum", "weight_decay", "ema_decay",
               "backbone_lr_mult", "freeze_bn", "image_size", "noisy_labels_key")
# What a checkpoint written before a flag existed is taken to have had (its default).
RESUME_DEFAULTS = {"backbone_lr_mult": 1.0, "freeze_bn": False, "image_size": 224, "noisy_labels_key": None}
# test_log.csv: top1/top5 of the EMA weights, *_raw of the trained weights.
TEST_FIELDS = ["step", "top1", "top5", "top1_raw", "top5_raw"]
TRAIN_FIELDS = ["step", "lr", "loss", "loss_ma", "loss_ma_mixed", "weight_mean", "weight_clean", "weight_noisy",
                "seconds"]


# ------------------------------------------------------------------------------------------------
# Determinism helpers
# ------------------------------------------------------------------------------------------------


class BatchStream:
    """Stateless batches over an infinite sequence of seeded per-epoch permutations of N examples.

    Global step t covers stream positions [t * B * W, (t + 1) * B * W); rank r takes the r-th block
    of B. Batches wrap across epoch boundaries (no example dropped), as the release's input queue.
    """

    def __init__(self, num_examples: int, batch: int, world: int, rank: int, seed: int):
        self.n, self.batch, self.world, self.rank, self.seed = num_examples, batch, world, rank, seed
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.pop(min(self._cache))
            gen = torch.Generator().manual_seed(derived_seed(self.seed, 1, epoch))
            self._cache[epoch] = torch.randperm(self.n, generator=gen)
        return self._cache[epoch]

    def indices(self, step: int) -> torch.Tensor:
        start = (step * self.world + self.rank) * self.batch
        pos = torch.arange(start, start + self.batch)
        epochs, offsets = pos // self.n, pos % self.n
        out = torch.empty(self.batch, dtype=torch.int64)
        for e in torch.unique(epochs).tolist():
            sel = epochs == e
            out[sel] = self._perm(e)[offsets[sel]]
        return out


def learning_rate(args, step: int, num_train: int, world_size: int) -> float:
    """``lr0 * factor ** floor(t / decay_steps)``, ``decay_steps = epochs_per_decay * N / (B * W)``."""
    decay_steps = args.num_epochs_per_decay * num_train / (args.batch_size * world_size)
    return args.lr * args.lr_decay_factor ** math.floor(step / decay_steps)


def set_tf32(enabled: bool) -> None:
    """TF32 tensor-core matmuls and convolutions on GPUs that have them (``--tf32``): off by default,
    so that a run computes in fp32 as the release did."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


@contextlib.contextmanager
def strict_fp32():
    """fp32 arithmetic without TF32 inside the block (the in-loop evaluation)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    set_tf32(False)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def backend_name(name: str, device: torch.device) -> str:
    """The MentorMix backend that ``name`` (e.g. ``"auto"``) resolves to on ``device``, for the logs."""
    from mentormix_fast.dispatch import choose

    return choose(name, device).name


# Below this many parameters a CPU run uses one intra-op thread: on a shared machine, a small network's
# ops are too short to gain from a second thread and lose much when another job holds a core.
SMALL_MODEL_PARAMETERS = 5_000_000


def choose_threads(requested: int, device: torch.device, num_parameters: int) -> int | None:
    """torch's intra-op thread count for a run: ``requested`` when > 0; for 0 (automatic) one thread for a
    small model on the CPU, else None (torch's default)."""
    if requested > 0:
        return requested
    if device.type == "cpu" and num_parameters < SMALL_MODEL_PARAMETERS:
        return 1
    return None


def params_digest(model: nn.Module) -> str:
    """A short hash of the parameters (not the buffers: BatchNorm statistics are per rank under DDP)."""
    h = hashlib.sha256()
    for t in model.parameters():
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------


class Trainer:
    """Everything one rank holds: data on the device, model (DDP-wrapped when distributed), optimizer,
    MentorMix loss, EMA, logs. ``run()`` trains to ``--max-steps`` (or ``--stop-at-step``)."""

    def __init__(self, args: argparse.Namespace, info: world.DistInfo):
        self.args, self.info = args, info
        self.device = info.device
        self.out = Path(args.out_dir)
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        # Rank 0 downloads (when asked) before the others read the folder.
        if info.is_main:
            train, self.test, self.num_classes = load_dataset(args.dataset, args.data_dir, args.download,
                                                              **dataset_options(args))
        world.barrier()
        if not info.is_main:
            train, self.test, self.num_classes = load_dataset(args.dataset, args.data_dir, False,
                                                              **dataset_options(args))
        download = args.download  # --pretrained torchvision/timm may fetch weights too
        args.download = False  # stored in checkpoints: a resume must not need the network
        # Rank 0 writes the noise file; the others wait and read the same labels.
        if info.is_main:
            noisy, clean, self.noise = training_labels(args, train, self.num_classes)
        world.barrier()
        if not info.is_main:
            noisy, clean, self.noise = training_labels(args, train, self.num_classes, write=False)
        self.num_train = len(train.labels)
        self.labels = torch.from_numpy(noisy).to(self.device)
        # None when the clean labels are unknown (user labels of an image-file dataset)
        self.is_noisy = None if clean is None else torch.from_numpy(noisy != clean).to(self.device)
        self.stream = BatchStream(self.num_train, args.batch_size, info.world_size, info.rank, args.seed)
        self.source = make_source(train, self.test, self.stream, self.device, seed=args.seed, rank=info.rank,
                                  image_size=args.image_size, workers=args.workers)
        self.test = self.source.test_data(args.eval_batch_size)

        torch.manual_seed(args.seed)
        in_channels = train.in_channels
        self.model = self._build_model(in_channels, download)
        threads = choose_threads(args.threads, self.device, count_parameters(self.model))
        if threads is not None:
            torch.set_num_threads(threads)
        self.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.net = self.model
        if info.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        decay = args.weight_decay if (not args.second_reweight or args.decay_with_second_reweight) else 0.0
        head = head_parameter_names(args.model, self.num_classes, in_channels)
        groups = param_groups(self.model, head, decay_parameters(self.model), decay, args.backbone_lr_mult)
        self.optimizer = torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum)
        self.ema = WeightEMA(self.model, args.ema_decay)
        self.mm_gen = torch.Generator(self.device)
        self.mentormix = MentorMix(
            total_steps=args.max_steps, percentile=args.percentile, mixup_alpha=args.mixup_alpha,
            second_reweight=args.second_reweight, burn_in_epoch=args.burn_in_epoch, weighting=args.weighting,
            loss_ma_decay=args.loss_ma_decay, backend=args.backend, generator=self.mm_gen,
            percentile_gather=all_gather_cat if args.global_percentile else None).to(self.device)
        self.amp_dtype = torch.bfloat16 if args.amp == "bf16" else None
        set_tf32(args.tf32)
        self.step = 0
        self.resumed_from = None
        if args.resume:
            self._resume(args.resume)

    def _build_model(self, in_channels: int, download: bool) -> nn.Module:
        """The student on the device: ``--model`` with ``--pretrained`` weights (not read when a checkpoint
        will be resumed: it has the weights) and ``--freeze-bn``."""
        args = self.args
        model = build_model(args.model, self.num_classes, in_channels)
        resuming = args.resume is not None and (args.resume != "latest" or ckpt.list_checkpoints(self.out))
        if args.pretrained and not resuming:
            # Rank 0 fetches (when asked) before the others read the cache.
            for turn in (True, False):
                if self.info.is_main == turn:
                    model, report = load_pretrained(model, args.model, args.pretrained, self.num_classes,
                                                    in_channels, download and turn)
                    for line in report:
                        self.log(line)
                if turn:
                    world.barrier()
        if args.freeze_bn:
            self.log(f"--freeze-bn: {freeze_batchnorm(model)} BatchNorm layers in eval mode")
        return model.to(self.device)

    # -- checkpoints -----------------------------------------------------------------------------

    def _resume(self, which: str) -> None:
        """Load ``which`` (a file: it must be intact) or, for ``latest``, the newest intact checkpoint in
        --out-dir: newer ones that fail to load are reported and moved aside to ``<name>.corrupt``."""
        skipped: list[ckpt.CheckpointError] = []
        if which == "latest":
            found = ckpt.list_checkpoints(self.out)
            if not found:
                self.log(f"no checkpoint in {self.out}: starting from step 0")
                return
            path = state = None
            for _, candidate in reversed(found):
                try:
                    state, path = ckpt.load(candidate), candidate
                    break
                except ckpt.CheckpointError as err:
                    skipped.append(err)
                    self.log(f"--resume: skipping {err}")
            if path is None:
                raise SystemExit(f"--resume: no intact checkpoint in {self.out}:\n"
                                 + "\n".join(f"  {err}" for err in skipped))
        else:
            path = Path(which)
            try:
                state = ckpt.load(path)
            except ckpt.CheckpointError as err:
                raise SystemExit(f"--resume: {err}") from None
        chosen = world.all_gather_objects(str(path))
        if any(c != chosen[0] for c in chosen):
            raise SystemExit(f"--resume: the ranks chose different checkpoints {chosen}")
        if skipped:
            self.log(f"--resume: falling back to {path}, the newest intact checkpoint "
                     f"({len(skipped)} newer one(s) skipped)")
            if self.info.is_main:
                for err in skipped:
                    aside = err.path.with_name(err.path.name + ".corrupt")
                    try:
                        err.path.replace(aside)
                        self.log(f"--resume: moved {err.path.name} aside to {aside.name}")
                    except OSError as move_err:
                        self.log(f"--resume: could not move {err.path.name} aside ({move_err})")
            world.barrier()
        given = {k: ckpt.plain_value(getattr(self.args, k)) for k in RESUME_KEYS}
        stored = {k: state["args"].get(k, RESUME_DEFAULTS.get(k)) for k in RESUME_KEYS}
        changed = {k: (stored[k], given[k]) for k in RESUME_KEYS if stored[k] != given[k]}
        if changed:
            raise SystemExit(f"--resume: {path} was trained with other settings {changed} (stored, given)")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        per_rank = state["mentormix_per_rank"]
        same_world = len(per_rank) == self.info.world_size
        self.mentormix.load_state_dict(per_rank[self.info.rank] if same_world else state["mentormix"])
        if same_world:
            ckpt.set_rng_state(state["rng_per_rank"][self.info.rank])
        else:
            self.log(f"resuming {len(per_rank)} ranks' state on {self.info.world_size}: "
                     f"each rank takes rank 0's moving averages")
        self.step = int(state["step"])
        self.resumed_from = str(path)
        self.log(f"resumed from {path} at step {self.step}")

    def save(self) -> None:
        mm_states = world.all_gather_objects({k: v.cpu() for k, v in self.mentormix.state_dict().items()})
        rng_states = world.all_gather_objects(ckpt.rng_state())
        if self.info.is_main:
            state = {"step": self.step, "args": ckpt.plain_value(vars(self.args)), "model": self.model.state_dict(),
                     "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "mentormix": mm_states[0], "mentormix_per_rank": mm_states, "rng_per_rank": rng_states,
                     "noise": ckpt.plain_value(self.noise), "world_size": self.info.world_size}
            ckpt.save_atomic(state, ckpt.checkpoint_path(self.out, self.step))
            ckpt.prune(self.out, self.args.keep_checkpoints)
        world.barrier()

    # -- one step --------------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def train_step(self, step: int, batch=None):
        """One MentorMix step t on ``batch`` = (idx, x) (default: the source's batch of step t); returns
        (loss, plan, idx) with the loss detached."""
        args = self.args
        idx, x = batch if batch is not None else self.source.batch(step)
        x = x.contiguous(memory_format=self.memory_format)
        y = self.labels[idx]
        self.mm_gen.manual_seed(derived_seed(args.seed, 3, step, self.info.rank))
        lr = learning_rate(args, step, self.num_train, self.info.world_size)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        with torch.no_grad(), frozen_batchnorm_stats(self.net), self._autocast():
            logits = self.net(x)
        plan = self.mentormix.plan(logits, y, step)
        with self._autocast():
            logits_mixed = self.net(self.mentormix.mix_inputs(x, plan))
        loss = self.mentormix.mixed_loss(logits_mixed, y, plan, step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.model, step)
        return loss.detach(), plan, idx, lr

    # -- the loop --------------------------------------------------------------------------------

    def log(self, message: str) -> None:
        if self.info.is_main:
            print(f"[mentormix] {message}", file=sys.stderr, flush=True)

    def evaluate(self) -> dict[str, float]:
        """Top-1 and top-5 of the EMA weights (``top1``, ``top5``) and of the raw weights (``top1_raw``,
        ``top5_raw``) on the clean test split, in fp32 whatever ``--amp`` (the release evaluates in fp32;
        a bf16 evaluation would move the reported accuracy)."""
        with strict_fp32():
            scores = accuracies({"ema": self.ema.averaged_model(self.model), "raw": self.model}, self.test,
                                self.device, self.args.eval_batch_size)
        return {**scores["ema"], **{f"{k}_raw": v for k, v in scores["raw"].items()}}

    def run(self) -> dict:
        args, main = self.args, self.info.is_main
        stop = args.max_steps if args.stop_at_step is None else min(args.stop_at_step, args.max_steps)
        resume_step = self.step if self.resumed_from else None
        backend = backend_name(args.backend, self.device)
        self.log(f"{args.dataset} {describe(self.noise)}, "
                 f"{args.model} ({count_parameters(self.model):,} parameters), backend {backend}, "
                 f"world {self.info.world_size}, device {self.device}, {torch.get_num_threads()} CPU threads")
        train_log = test_log = weights_log = None
        tb = TensorBoardLog(self.out / "tb", main and args.tensorboard, purge_step=resume_step)
        if main:
            train_log = CsvLog(self.out / "train_log.csv", TRAIN_FIELDS, resume_step)
            test_log = CsvLog(self.out / "test_log.csv", TEST_FIELDS, resume_step)
            weights_log = CsvLog(self.out / "weights.csv", ["step", "weight", "noisy"], resume_step)
        progress = None
        if main and args.progress:
            from tqdm import tqdm

            progress = tqdm(total=stop, initial=self.step, desc="mentormix", dynamic_ncols=True)
        started = time.time()
        scores = None
        batches = self.source.train_batches(self.step, stop)
        while self.step < stop:
            t = self.step
            loss, plan, idx, lr = self.train_step(t, next(batches))
            self.step = t + 1
            if progress is not None:
                progress.update(1)
            saving = (args.checkpoint_every > 0 and self.step % args.checkpoint_every == 0) or self.step == stop
            if (self.step % args.log_every == 0 or saving) and not math.isfinite(float(loss)):
                # Checked where the loss is read anyway (log and checkpoint steps): a run that diverged
                # stops before it writes a checkpoint of non-finite weights.
                raise SystemExit(f"mentormix-train: the loss is {float(loss)} at step {self.step}: training "
                                 f"diverged (lower --lr, or --backbone-lr-mult when fine-tuning); the last "
                                 f"checkpoint in {self.out} is from before")
            if main and (self.step % args.log_every == 0 or self.step == args.max_steps):
                w = plan.weights.float()
                # With the clean labels unknown, the clean/noisy cells stay empty.
                noisy = self.is_noisy[idx] if self.is_noisy is not None else None
                known = noisy is not None
                row = {"step": self.step, "lr": lr, "loss": float(loss),
                       "loss_ma": float(self.mentormix.loss_ma), "loss_ma_mixed": float(self.mentormix.loss_ma_mixed),
                       "weight_mean": float(w.mean()),
                       "weight_clean": float(w[~noisy].mean()) if known and bool((~noisy).any()) else "",
                       "weight_noisy": float(w[noisy].mean()) if known and bool(noisy.any()) else "",
                       "seconds": round(time.time() - started, 3)}
                train_log.write(row)
                flags = [int(n) for n in noisy.cpu().tolist()] if known else [""] * len(w)
                weights_log.write_many({"step": self.step, "weight": f"{v:.6g}", "noisy": n}
                                       for v, n in zip(w.cpu().tolist(), flags, strict=True))
                tb.scalars(self.step, {f"train/{k}": v for k, v in row.items()
                                       if k not in ("step", "seconds") and v != ""})
                if known:
                    tb.histogram(self.step, "weights/clean", w[~noisy].cpu())
                    tb.histogram(self.step, "weights/noisy", w[noisy].cpu())
                if progress is not None:
                    progress.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.3g}")
            if main and ((args.eval_every > 0 and self.step % args.eval_every == 0) or self.step == args.max_steps):
                scores = self.evaluate()
                test_log.write({"step": self.step, **scores})
                tb.scalars(self.step, {f"test/{k}" if k.endswith("_raw") else f"test/{k}_ema": v
                                       for k, v in scores.items()})
                self.log(f"step {self.step}: test top-1 {scores['top1']:.4f} top-5 {scores['top5']:.4f} (EMA), "
                         f"top-1 {scores['top1_raw']:.4f} top-5 {scores['top5_raw']:.4f} (raw)")
            if saving:
                self.save()
        if main and scores is None and self.step >= args.max_steps:
            scores = self.evaluate()  # a --resume of a finished run still reports its accuracy
        if progress is not None:
            progress.close()
        for log in (train_log, test_log, weights_log):
            if log is not None:
                log.close()
        tb.close()
        digests = world.all_gather_objects({"model": params_digest(self.model),
                                            "ema": params_digest(self.ema.averaged_model(self.model))})
        summary = {"step": self.step, "finished": self.step >= args.max_steps, "top1_ema": scores and scores["top1"],
                   "top5_ema": scores and scores["top5"], "top1_raw": scores and scores["top1_raw"],
                   "top5_raw": scores and scores["top5_raw"],
                   "dataset": args.dataset, "noise": self.noise, "model": args.model,
                   "parameters": count_parameters(self.model), "backend": backend,
                   "world_size": self.info.world_size, "threads": torch.get_num_threads(), "rank_digests": digests,
                   "ranks_agree": all(d == digests[0] for d in digests),
                   "rank_loss_ma": world.all_gather_objects([float(self.mentormix.loss_ma),
                                                             float(self.mentormix.loss_ma_mixed)]),
                   "resumed_from": self.resumed_from,
                   "wall_s": round(time.time() - started, 3)}
        if main:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return summary

