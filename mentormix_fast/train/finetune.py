"""Fine-tuning controls of the trainer: a learning-rate multiplier of the backbone and frozen BatchNorm.

``--backbone-lr-mult m``: every parameter except the new classifier head trains at ``m * lr`` (the head
at ``lr``). :func:`param_groups` gives the optimizer's groups, each with an ``lr_mult`` entry the
trainer multiplies the schedule's learning rate by; the weight-decay split is kept inside each part.
With ``m == 1`` the groups are the release's two (decayed, not decayed). With ``m == 0`` the backbone
is frozen: its parameters stop requiring gradients (none computed for them, no update, no weight
decay).

``--freeze-bn``: every BatchNorm layer stays in eval mode during training: it normalises with its
running statistics and never updates them; its affine parameters (gamma, beta) still train (unless
the backbone is frozen). :func:`freeze_batchnorm` holds that through ``model.train()`` calls.
"""

from __future__ import annotations

from torch import nn


def param_groups(model: nn.Module, head: frozenset[str], decayed: list[nn.Parameter], weight_decay: float,
                 backbone_lr_mult: float = 1.0) -> list[dict]:
    """SGD parameter groups: (decayed, not decayed) x (backbone, head) with ``weight_decay`` on the decayed
    ones and ``lr_mult`` (``backbone_lr_mult`` for the backbone, 1 for the head); empty groups are left out.
    ``backbone_lr_mult == 1`` gives two groups, decayed and not, as the release."""
    decayed_ids = {id(p) for p in decayed}
    split = backbone_lr_mult != 1.0
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        in_backbone = split and name not in head
        if in_backbone and backbone_lr_mult == 0.0:
            p.requires_grad_(False)
        groups.setdefault((id(p) in decayed_ids, in_backbone), []).append(p)
    out = []
    for is_decayed, in_backbone in ((True, True), (False, True), (True, False), (False, False)):
        params = groups.get((is_decayed, in_backbone))
        if params:
            out.append({"params": params, "weight_decay": weight_decay if is_decayed else 0.0,
                        "lr_mult": backbone_lr_mult if in_backbone else 1.0})
    return out


def _keep_eval(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook: the layer computes in eval mode whatever ``train()`` set since."""
    if module.training:
        module.train(False)


def freeze_batchnorm(model: nn.Module) -> int:
    """Put every BatchNorm layer of ``model`` in eval mode now and before each of its forwards (a pre-hook,
    kept by ``copy.deepcopy``); returns how many layers. Composes with
    :func:`mentormix_fast.frozen_batchnorm_stats`: in eval mode a layer uses and keeps its running statistics."""
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in layers:
        m.train(False)
        m.register_forward_pre_hook(_keep_eval)
    return len(layers)
