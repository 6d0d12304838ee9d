"""Command-line helpers of the training programs: range-checked ``type=`` converters and the help formatter.

Each converter raises :class:`argparse.ArgumentTypeError`, so a bad value ends the program with exit
code 2 and ``argument --flag: must be ...``; ``converter.accepts`` says the accepted range in words, and
:class:`HelpFormatter` shows it next to the flag's default.
"""

from __future__ import annotations

import argparse
import math
import re

import torch

_CUDA = re.compile(r"^cuda(?::(\d+))?$")


def _named(accepts: str, fn):
    fn.accepts = accepts
    return fn


def int_at_least(lo: int):
    """An integer ``>= lo``."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be an integer >= {lo}, got {value}")
        return value

    return _named(f"integer >= {lo}", convert)


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def finite_float(lo: float | None = None, hi: float | None = None, *, lo_inclusive: bool = True,
                 hi_inclusive: bool = True):
    """A finite float in the interval from ``lo`` to ``hi`` (one of them may be None: unbounded)."""
    if lo is None and hi is None:
        raise ValueError("finite_float: give lo, hi or both")
    if lo is not None and hi is not None:
        accepts = f"{'[' if lo_inclusive else '('}{lo:g}, {hi:g}{']' if hi_inclusive else ')'}"
        accepts = f"in {accepts}"
    elif lo is not None:
        accepts = f"{'>=' if lo_inclusive else '>'} {lo:g}"
    else:
        accepts = f"{'<=' if hi_inclusive else '<'} {hi:g}"

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {accepts}, got {text!r}") from None
        ok = math.isfinite(value)
        if ok and lo is not None:
            ok = value >= lo if lo_inclusive else value > lo
        if ok and hi is not None:
            ok = value <= hi if hi_inclusive else value < hi
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a finite number {accepts}, got {text}")
        return value

    return _named(accepts, convert)


unit_interval = finite_float(0.0, 1.0)
positive_float = finite_float(0.0, lo_inclusive=False)
nonnegative_float = finite_float(0.0)


def device(text: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; a CUDA device must exist on this machine."""
    text = text.strip()
    if text in ("auto", "cpu"):
        return text
    match = _CUDA.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text} asked for, but torch sees no CUDA device on this machine "
                                         f"(torch.cuda.is_available() is False); use cpu or auto")
    count = torch.cuda.device_count()
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise argparse.ArgumentTypeError(f"{text} asked for, but this machine has {count} CUDA device(s): "
                                         f"cuda:0 to cuda:{count - 1}")
    return text


device.accepts = "auto, cpu, cuda or cuda:N"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's default (not for a required one, nor when its help names one already) and accepted range
    after its help; the description and the epilog keep their line breaks (for tables)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required or "default:" in text or "%(default)" in text:
            base = text
        else:
            base = super()._get_help_string(action)
        accepts = getattr(action.type, "accepts", None)
        if accepts is None:
            return base
        if base.endswith(" (default: %(default)s)"):
            return f"{base[:-1]}; accepts {accepts})"
        return f"{base} (accepts {accepts})"
