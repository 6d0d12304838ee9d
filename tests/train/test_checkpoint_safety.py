"""Checkpoints are plain data (no code runs on load), verified against their digest, and ``--resume``
falls back to the newest intact one."""

import builtins
import json
import random
import shutil
import zipfile

import numpy as np
import pytest
import torch

from mentormix_fast.train import checkpoint as ckpt
from mentormix_fast.train.evaluate import evaluate_checkpoint
from mentormix_fast.train.evaluate import main as eval_main

RUN = ["--max-steps", "8", "--log-every", "2", "--eval-every", "0", "--checkpoint-every", "3"]


class Payload:
    """Pickles as a call that creates ``marker``: what a crafted file would run on an unsafe load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, train_run):
    """An uninterrupted 8-step run and one interrupted at step 6 (checkpoints at steps 3 and 6)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    whole = train_run(tmp / "whole", tmp / "data", *RUN)
    part = train_run(tmp / "part", tmp / "data", *RUN, "--stop-at-step", "6")
    assert [s for s, _ in ckpt.list_checkpoints(part)] == [3, 6]
    return {"whole": whole, "part": part, "data": tmp / "data"}


@pytest.fixture
def part_copy(tmp_path, runs):
    """A private copy of the interrupted run's folder (tests damage its checkpoints)."""
    return shutil.copytree(runs["part"], tmp_path / "part")


def _tensor_record_span(path):
    """(offset, size) of the bytes of the largest tensor record in a torch.save archive."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def _flip_tensor_record(path):
    start, size = _tensor_record_span(path)
    assert size >= 8192
    data = bytearray(path.read_bytes())
    lo = start + size // 2 - 2048
    data[lo:lo + 4096] = bytes(b ^ 0xFF for b in data[lo:lo + 4096])
    path.write_bytes(bytes(data))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path):
    path.write_bytes(b"")


def _flip_header(path):
    data = bytearray(path.read_bytes())
    data[:16] = bytes(b ^ 0xFF for b in data[:16])
    path.write_bytes(bytes(data))


DAMAGE = {
    "flipped-tensor-record": (_flip_tensor_record, "corrupt (digest mismatch"),
    "truncated": (_truncate, "unreadable: truncated or damaged"),
    "zero-bytes": (_empty, "empty file (0 bytes)"),
    "flipped-header": (_flip_header, "not a checkpoint (bad header"),
}


def _state_equal(a, b):
    assert a["step"] == b["step"]
    for key in ("model", "mentormix"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)
    for name, t in a["ema"]["shadow"].items():
        assert torch.equal(t, b["ema"]["shadow"][name]), name
    for i, s in a["optimizer"]["state"].items():
        assert torch.equal(s["momentum_buffer"], b["optimizer"]["state"][i]["momentum_buffer"])


# ------------------------------------------------------------------------------------------------
# What a checkpoint holds
# ------------------------------------------------------------------------------------------------


def test_checkpoint_is_plain_data_with_a_digest(runs):
    path = ckpt.latest_checkpoint(runs["part"])
    record = torch.load(path, weights_only=True)  # nothing but tensors and plain containers
    assert record["format"] == ckpt.FORMAT and record["version"] == ckpt.VERSION
    assert record["sha256"] == ckpt.payload_digest(record["payload"])
    payload = ckpt.load(path)
    assert payload["step"] == 6 and payload["args"]["max_steps"] == 8
    rng = payload["rng_per_rank"][0]
    assert rng["python"]["state"].dtype == torch.int64 and rng["numpy"]["key"].shape == (624,)


def test_rng_state_round_trip():
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.gauss(0, 1)
    np.random.standard_normal()  # leaves a cached Gaussian in both states
    saved = ckpt.rng_state()
    first = (random.random(), random.gauss(0, 1), np.random.standard_normal(), np.random.rand(3).tolist(),
             torch.rand(3).tolist())
    ckpt.set_rng_state(ckpt.to_plain_cpu(saved))
    again = (random.random(), random.gauss(0, 1), np.random.standard_normal(), np.random.rand(3).tolist(),
             torch.rand(3).tolist())
    assert first == again


def test_save_refuses_what_is_not_plain_data(tmp_path):
    for bad in ({"x": np.zeros(3)}, {"x": object()}, {(1, 2): 3}):
        with pytest.raises(TypeError):
            ckpt.save_atomic(bad, tmp_path / "ckpt-000000001.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = ckpt.save_atomic({"step": 1, "w": torch.arange(4)}, tmp_path / "ckpt-000000001.pt")

    def cut_short(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", cut_short)
    with pytest.raises(OSError, match="No space"):
        ckpt.save_atomic({"step": 1, "w": torch.arange(5)}, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert torch.equal(ckpt.load(path)["w"], torch.arange(4))


def test_prune_removes_what_an_interrupted_write_left(tmp_path):
    for step in (1, 2, 3):
        ckpt.save_atomic({"step": step}, ckpt.checkpoint_path(tmp_path, step))
    (tmp_path / ".ckpt-000000004.pt.999999999.tmp").write_bytes(b"PK\x03\x04 cut short by kill -9")
    (tmp_path / "notes.txt").write_text("kept")
    ckpt.prune(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000002.pt", "ckpt-000000003.pt", "notes.txt"]


def test_a_file_without_digest_is_refused(tmp_path):
    path = tmp_path / "ckpt-000000001.pt"
    torch.save({"step": 1, "model": {"w": torch.zeros(2)}}, path)
    with pytest.raises(ckpt.CheckpointError, match=r"ckpt-000000001\.pt: not a .* no digest"):
        ckpt.load(path)


# ------------------------------------------------------------------------------------------------
# Crafted checkpoints run nothing
# ------------------------------------------------------------------------------------------------


def _plant_payload(folder, marker, step=9):
    path = ckpt.checkpoint_path(folder, step)
    torch.save({"step": step, "args": {}, "noise": Payload(marker)}, path)
    return path


def test_the_planted_payload_runs_under_an_unsafe_load(tmp_path):
    """The control: the payload of the tests below does run when unpickled without restriction."""
    marker = tmp_path / "ran"
    path = _plant_payload(tmp_path, marker)
    torch.load(path, weights_only=False)  # the test's own file: proves the payload would run
    assert marker.exists()


def test_malicious_checkpoint_does_not_run_under_evaluate(part_copy, tmp_path, capsys):
    marker = tmp_path / "ran"
    path = _plant_payload(part_copy, marker)
    with pytest.raises(Exception) as exc:
        evaluate_checkpoint(part_copy)  # a folder: its newest checkpoint, the planted one
    assert not marker.exists()
    assert isinstance(exc.value, ckpt.CheckpointError) and str(exc.value).startswith(str(path))
    assert "refused" in str(exc.value) and "exec" in str(exc.value)
    assert eval_main([str(path)]) == 1
    assert not marker.exists() and f"{path}: refused" in capsys.readouterr().err


def test_malicious_checkpoint_does_not_run_under_resume(runs, part_copy, tmp_path, train_run, capsys):
    marker = tmp_path / "ran"
    path = _plant_payload(part_copy, marker, step=7)
    with pytest.raises(SystemExit) as exc:
        train_run(part_copy, runs["data"], *RUN, "--resume", str(path))
    assert not marker.exists()
    assert str(exc.value).startswith(f"--resume: {path}: refused")
    train_run(part_copy, runs["data"], *RUN, "--resume")
    assert not marker.exists()
    err = capsys.readouterr().err
    assert f"skipping {path}: refused" in err and "falling back to" in err
    _state_equal(ckpt.load(ckpt.latest_checkpoint(runs["whole"])), ckpt.load(ckpt.latest_checkpoint(part_copy)))


# ------------------------------------------------------------------------------------------------
# Damaged checkpoints: a clear error naming the file; --resume falls back
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_checkpoint_is_a_clear_error(part_copy, kind, capsys):
    damage, message = DAMAGE[kind]
    path = ckpt.checkpoint_path(part_copy, 6)
    damage(path)
    with pytest.raises(ckpt.CheckpointError) as exc:
        ckpt.load(path)
    assert str(exc.value).startswith(f"{path}: {message}"), str(exc.value)
    assert isinstance(exc.value, ValueError) and exc.value.path == path
    assert eval_main([str(path)]) == 1
    assert f"{path}: {message}" in capsys.readouterr().err


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_resume_falls_back_to_the_newest_intact_checkpoint(runs, part_copy, train_run, capsys, kind):
    damage, message = DAMAGE[kind]
    newest = ckpt.checkpoint_path(part_copy, 6)
    damage(newest)
    with pytest.raises(SystemExit, match=f"--resume: {newest}: "):  # an explicit file: no fallback
        train_run(part_copy, runs["data"], *RUN, "--resume", str(newest))
    capsys.readouterr()
    train_run(part_copy, runs["data"], *RUN, "--resume")
    err = capsys.readouterr().err
    assert f"skipping {newest}: {message}" in err
    assert f"falling back to {ckpt.checkpoint_path(part_copy, 3)}" in err
    assert newest.with_name(newest.name + ".corrupt").exists()  # kept for a look, out of the way
    summary = json.loads((part_copy / "summary.json").read_text())
    assert summary["resumed_from"].endswith("ckpt-000000003.pt") and summary["finished"]
    assert [s for s, _ in ckpt.list_checkpoints(part_copy)] == [3, 6, 8]
    # The fallback replays steps 3..8 exactly as the uninterrupted run did.
    _state_equal(ckpt.load(ckpt.latest_checkpoint(runs["whole"])), ckpt.load(ckpt.latest_checkpoint(part_copy)))
    for log in ("train_log.csv", "weights.csv"):
        assert (part_copy / log).read_text().count("\n") == (runs["whole"] / log).read_text().count("\n")


def test_resume_without_an_intact_checkpoint_lists_them(runs, part_copy, train_run):
    _truncate(ckpt.checkpoint_path(part_copy, 6))
    _flip_tensor_record(ckpt.checkpoint_path(part_copy, 3))
    with pytest.raises(SystemExit) as exc:
        train_run(part_copy, runs["data"], *RUN, "--resume")
    text = str(exc.value)
    assert text.startswith(f"--resume: no intact checkpoint in {part_copy}")
    assert "ckpt-000000006.pt: unreadable" in text and "ckpt-000000003.pt: corrupt (digest mismatch" in text
