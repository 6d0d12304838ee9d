"""Atomic checkpoints of a training run and the RNG states that make ``--resume`` exact.

A checkpoint is one ``torch.save`` dict written to ``ckpt-<step>.pt.tmp`` then renamed over
``ckpt-<step>.pt`` (``os.replace`` is atomic on POSIX), so a crash never leaves a half-written
file under a checkpoint name. ``step`` in the file is the number of optimizer steps already taken.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def checkpoint_path(folder, step: int) -> Path:
    return Path(folder) / f"ckpt-{step:09d}.pt"


def list_checkpoints(folder) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint in ``folder``, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / name) for name in os.listdir(folder) if (m := _NAME.match(name))]
    return sorted(found)


def latest_checkpoint(folder) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def save_atomic(state: dict, path) -> Path:
    """``torch.save`` to a temporary name in the same folder, fsync, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def prune(folder, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0``: keep all)."""
    if keep > 0:
        for _, path in list_checkpoints(folder)[:-keep]:
            path.unlink(missing_ok=True)


def load(path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=False)


def rng_state() -> dict:
    """The global RNG states: Python, NumPy, torch CPU and (when present) every CUDA device."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
