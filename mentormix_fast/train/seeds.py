"""Seeds derived from integers, so that every random draw of a run is a function of (seed, use, step, ...)."""

from __future__ import annotations

import numpy as np


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (NumPy's SeedSequence hashing): independent streams per use."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))
