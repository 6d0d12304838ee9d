"""mentormix-fast: MentorMix (Jiang et al., ICML 2020) for PyTorch, with fused kernels.

Public API: :class:`MentorMix` (the loss module), :class:`MentorMixPlan`, :class:`MentorMixLossFunction`
(the mixed loss as an autograd.Function), :class:`MentorNet` and :func:`mentornet_pd`, and
:func:`backends` (which backends this installation can run). The plain-PyTorch semantics live in
:mod:`mentormix_fast.reference`.
"""

from .autograd import MentorMixLossFunction
from .batchnorm import frozen_batchnorm_stats
from .config import MentorMixConfig
from .dispatch import backends
from .mentornet import MentorNet, mentornet_pd
from .module import MentorMix, MentorMixPlan

__all__ = [
    "MentorMix",
    "MentorMixConfig",
    "MentorMixLossFunction",
    "MentorMixPlan",
    "MentorNet",
    "backends",
    "frozen_batchnorm_stats",
    "mentornet_pd",
]
__version__ = "0.1.0"
