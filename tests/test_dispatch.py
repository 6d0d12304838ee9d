"""Backend choice (mentormix_fast.dispatch): what ``backends()`` reports and why, what "auto"
picks, the float64 fallback, and an installation without the compiled extension."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import mentormix_fast as mf
from mentormix_fast import dispatch


def test_backends_reports_every_backend_with_a_reason():
    status = mf.backends()
    assert list(status) == [n for n in dispatch.AUTO_ORDER if n in status]
    assert set(status) == set(dispatch.AUTO_ORDER)
    assert status["reference"] == "available"
    assert all(isinstance(v, str) and v for v in status.values())


def test_the_cpu_extension_is_built_by_pip_install():
    """CI installs with `pip install`: the C++ CPU backend must be there (its status names why not)."""
    assert mf.backends()["cpu"] == "available", mf.backends()["cpu"]


def test_auto_picks_the_fastest_backend_for_the_device_and_never_the_interpreter():
    cpu = dispatch.choose("auto", "cpu")
    assert cpu.name == ("cpu" if mf.backends()["cpu"] == "available" else "reference")
    if torch.cuda.is_available():
        assert dispatch.choose("auto", "cuda").name in ("cuda", "triton")


def test_float64_goes_to_the_reference():
    for name, status in mf.backends().items():
        if status == "available" and name != "reference":
            device = "cuda" if name == "cuda" else ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                backend = dispatch.choose(name, device, torch.float64)
            except ValueError:
                continue
            assert backend.reference
    assert dispatch.choose("triton", "cuda" if torch.cuda.is_available() else "cpu", torch.float64,
                           for_mix=True).name == "triton" or mf.backends()["triton"] != "available"


def test_unknown_or_unavailable_backends_are_clear_errors():
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        dispatch.choose("nope", "cpu")
    with pytest.raises(ValueError, match="backend"):
        mf.MentorMix(total_steps=10, backend="nope")
    if mf.backends()["cuda"] != "available":
        with pytest.raises(ValueError, match="'cuda' is not available"):
            dispatch.choose("cuda", "cuda")


def test_missing_cpu_features_are_named():
    assert dispatch.missing_cpu_features("default", "DEFAULT") is None
    assert dispatch.missing_cpu_features("avx2", "AVX512") is None
    assert dispatch.missing_cpu_features("avx2", "AVX2") is None
    assert "avx512" in dispatch.missing_cpu_features("avx512", "AVX2")
    assert dispatch.missing_cpu_features(torch.ops.mentormix_cpp.cpu_isa()) is None


def test_the_loss_function_goes_through_dispatch():
    """MentorMixLossFunction (stateless) runs the op of the backend "auto" picks for the logits."""
    z = torch.randn(8, 5, requires_grad=True)
    y = torch.randint(0, 5, (8,))
    loss = mf.MentorMixLossFunction.apply(z, y, torch.arange(8).flip(0), torch.rand(8))
    loss.backward()
    assert loss.dtype == torch.float32 and z.grad is not None


def test_import_without_extension_reports_reason():
    """Without mentormix_fast._C (not built), the package imports, works on the reference and says why
    "cpu" is missing."""
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name in ('mentormix_fast._C', 'mentormix_fast._C_cuda'):\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch, mentormix_fast as m\n"
        "s = m.backends()\n"
        "assert s['reference'] == 'available' and 'not built' in s['cpu'] and s['cuda'] != 'available', s\n"
        "assert m.dispatch.choose('auto', 'cpu').name == 'reference'\n"
        "mm = m.MentorMix(total_steps=10)\n"
        "z = torch.randn(6, 3); y = torch.randint(0, 3, (6,))\n"
        "assert torch.isfinite(mm.mixed_loss(z, y, mm.plan(z, y)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
