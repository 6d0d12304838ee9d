"""Checkpoints of a training run: plain data only, verified on load, written atomically.

A checkpoint ``ckpt-<step>.pt`` is one ``torch.save`` archive of ::

    {"format": "mentormix-fast-checkpoint", "version": 2, "sha256": "<hex>", "payload": {...}}

The payload (``step``, ``args``, ``model``, ``ema``, ``optimizer``, ``mentormix``, ``mentormix_per_rank``,
``rng_per_rank``, ``noise``, ``world_size``) holds only CPU tensors, dicts, lists, tuples, str, int,
float, bool and None: the RNG states too (:func:`rng_state`). :func:`load` reads it with
``torch.load(weights_only=True)``, which builds nothing but those types (a pickled callable is refused,
never run), then checks :func:`payload_digest` against the stored ``sha256``: SHA-256 over every
tensor's dtype, shape and bytes and every plain value, in order. Anything wrong with the file (empty,
not an archive, truncated, not plain data, a digest that does not match) raises :class:`CheckpointError`,
whose message starts with the file's path.

:func:`save_atomic` writes to a temporary name in the same folder, fsyncs, renames it over
``ckpt-<step>.pt`` (``os.replace`` is atomic on POSIX) and fsyncs the folder, so a crash never leaves a
half-written file under a checkpoint name. ``step`` is the number of optimizer steps already taken.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import re
import struct
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

FORMAT = "mentormix-fast-checkpoint"
VERSION = 2
_NAME = re.compile(r"^ckpt-(\d+)\.pt$")
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def checkpoint_path(folder, step: int) -> Path:
    return Path(folder) / f"ckpt-{step:09d}.pt"


def list_checkpoints(folder) -> list[tuple[int, Path]]:
    """(step, path) of every file named like a checkpoint in ``folder``, oldest first (not verified)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), folder / name) for name in os.listdir(folder) if (m := _NAME.match(name))]
    return sorted(found)


def latest_checkpoint(folder) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


# ------------------------------------------------------------------------------------------------
# Plain data and its digest
# ------------------------------------------------------------------------------------------------


def to_plain_cpu(obj, where: str = "checkpoint"):
    """A copy of ``obj`` with every tensor on the CPU (and detached); raises TypeError for anything that is
    not a tensor, dict, list, tuple, str, int, float, bool or None (``weights_only`` loading refuses it)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: dict key {k!r} is not a str or int")
            out[k] = to_plain_cpu(v, f"{where}[{k!r}]")
        if hasattr(obj, "_metadata"):  # a module state_dict's per-module versions
            out._metadata = to_plain_cpu(obj._metadata, f"{where}._metadata")
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain_cpu(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where}: {type(obj).__module__}.{type(obj).__qualname__} is not plain data "
                    f"(tensors, dicts, lists, tuples, str, int, float, bool, None)")


def plain_value(value):
    """``value`` as plain data for a checkpoint's flags or reports: NumPy scalars as Python numbers, tuples
    as lists, dict keys as str, anything else that is not plain as its ``str``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain_value(v) for k, v in value.items()}
    return str(value)


def _hash_into(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        meta = f"{t.dtype}|{tuple(t.shape)}".encode()
        h.update(b"X" + struct.pack("<I", len(meta)) + meta)
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif obj is None:
        h.update(b"N")
    elif isinstance(obj, bool):
        h.update(b"B1" if obj else b"B0")
    elif isinstance(obj, int):
        text = str(obj).encode()
        h.update(b"I" + struct.pack("<I", len(text)) + text)
    elif isinstance(obj, float):
        text = obj.hex().encode()
        h.update(b"F" + struct.pack("<I", len(text)) + text)
    elif isinstance(obj, str):
        text = obj.encode("utf-8", "surrogatepass")
        h.update(b"S" + struct.pack("<Q", len(text)) + text)
    elif isinstance(obj, dict):
        h.update(b"D" + struct.pack("<Q", len(obj)))
        for k, v in obj.items():
            _hash_into(h, k)
            _hash_into(h, v)
        meta = getattr(obj, "_metadata", None)
        if meta is not None:
            h.update(b"M")
            _hash_into(h, meta)
    elif isinstance(obj, (list, tuple)):
        h.update((b"L" if isinstance(obj, list) else b"T") + struct.pack("<Q", len(obj)))
        for v in obj:
            _hash_into(h, v)
    else:
        raise TypeError(f"{type(obj).__module__}.{type(obj).__qualname__} is not plain data")


def payload_digest(payload) -> str:
    """SHA-256 (hex) of a plain payload: each tensor's dtype, shape and bytes, each value, in order."""
    h = hashlib.sha256()
    _hash_into(h, payload)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_atomic(state: dict, path) -> Path:
    """Write ``state`` (plain data: see :func:`to_plain_cpu`) with its digest as a checkpoint: ``torch.save``
    to a temporary name in the same folder, fsync, rename into place, fsync the folder."""
    path = Path(path)
    payload = to_plain_cpu(state)
    record = {"format": FORMAT, "version": VERSION, "sha256": payload_digest(payload), "payload": payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(record, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


_TEMPORARY = re.compile(r"^\.ckpt-\d+\.pt\.(\d+)\.tmp$")


def prune(folder, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0``: keep all), and the temporary files
    that an interrupted :func:`save_atomic` of another process left behind."""
    if keep > 0:
        for _, path in list_checkpoints(folder)[:-keep]:
            path.unlink(missing_ok=True)
    folder = Path(folder)
    if folder.is_dir():
        for name in os.listdir(folder):
            m = _TEMPORARY.match(name)
            if m and int(m.group(1)) != os.getpid():
                (folder / name).unlink(missing_ok=True)


def _first_line(err: BaseException) -> str:
    """``Type: first sentence`` of an exception's message."""
    lines = str(err).strip().splitlines()
    if not lines:
        return type(err).__name__
    return f"{type(err).__name__}: {lines[0].split('. ')[0].rstrip('.')[:200]}"


def _unpickler_reason(err: BaseException) -> str:
    """The line of torch's weights-only error that says what was refused."""
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip().split(". Please")[0].split("\n")[0]
        return text.rstrip(".")[:200]
    return _first_line(err)


def load(path, map_location="cpu") -> dict:
    """The payload of the checkpoint ``path``, read without running any code and verified against its
    digest; :class:`CheckpointError` (naming the file) when it is unusable."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
    except OSError as err:
        raise CheckpointError(path, f"cannot be read ({_first_line(err)})") from err
    if size == 0:
        raise CheckpointError(path, "empty file (0 bytes)")
    if head != _ZIP_MAGIC:
        raise CheckpointError(path, f"not a checkpoint (bad header {head!r}: expected a torch.save zip archive)")
    try:
        record = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # the zip reader and the unpickler raise many kinds
        if isinstance(err, pickle.UnpicklingError):
            raise CheckpointError(path, f"refused: not plain data, or damaged ({_unpickler_reason(err)}); "
                                        f"nothing in it was run") from err
        raise CheckpointError(path, f"unreadable: truncated or damaged ({_first_line(err)})") from err
    if not (isinstance(record, dict) and record.get("format") == FORMAT and "payload" in record
            and isinstance(record.get("sha256"), str)):
        raise CheckpointError(path, f"not a {FORMAT} (version {VERSION}) file: no digest")
    if record.get("version") != VERSION:
        raise CheckpointError(path, f"format version {record.get('version')!r}, this program reads {VERSION}")
    try:
        digest = payload_digest(record["payload"])
    except TypeError as err:
        raise CheckpointError(path, f"corrupt ({err})") from err
    if digest != record["sha256"]:
        raise CheckpointError(path, f"corrupt (digest mismatch: stored sha256 {record['sha256'][:16]}..., "
                                    f"contents hash to {digest[:16]}...)")
    return record["payload"]


# ------------------------------------------------------------------------------------------------
# RNG states as plain data
# ------------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """The global RNG states as plain data: Python, NumPy, torch CPU and (when present) every CUDA device."""
    version, internal, gauss = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss": gauss},
             "numpy": {"bit_generator": str(name), "key": torch.from_numpy(np.asarray(key, dtype=np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["bit_generator"], npy["key"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
