"""The training program: the release's CIFAR recipe (SPEC §3) around the :class:`mentormix_fast.MentorMix` loss.

    python -m mentormix_fast.train ...               # train (:mod:`.cli`; ``--help`` lists the flags and presets)
    python -m mentormix_fast.train.evaluate RUN_DIR  # top-1 of a checkpoint's EMA weights
    python -m mentormix_fast.train.plots RUN_DIR     # accuracy and example-weight PNGs
    python -m mentormix_fast.train.noise ...         # write the noisy labels of one setting

Modules: :mod:`.cli` (flags, ``main``), :mod:`.presets` (the release's settings), :mod:`.trainer` (the
training loop), :mod:`.data` (digits and CIFAR in memory), :mod:`.noise` (synthetic label noise),
:mod:`.models` (the pre-activation ResNets), :mod:`.augment` (the CIFAR input pipeline),
:mod:`.checkpoint`, :mod:`.ema` (weight averaging), :mod:`.logs` (CSV and TensorBoard),
:mod:`.evaluate`, :mod:`.plots`, :mod:`.world` (``torchrun`` process groups), :mod:`.argtypes` (range-checked
flag types). The library itself does not import this subpackage.
"""
