"""Named networks from torchvision and timm with a K-class head, and their pretrained weights.

Names (besides the release's ResNets of :mod:`mentormix_fast.train.models`):

* a torchvision classification model, e.g. ``resnet18``, ``resnet50``, ``inception_v3``
  (``torchvision.models.list_models(module=torchvision.models)`` lists them);
* a timm model as ``timm:<name>``, e.g. ``timm:inception_resnet_v2`` (``timm.list_models()``), when
  timm is installed (``pip install timm``).

:func:`build` maps images [N, C_in, H, W] to logits [N, K]: torchvision models are built with
``num_classes=K`` (inception_v3 and googlenet without their auxiliary heads, so the forward returns the
logits alone in train mode too); a grey input (C_in = 1) is repeated to 3 channels by a forward
pre-hook, which keeps the state_dict keys the library's own. timm models are built with
``create_model(name, num_classes=K, in_chans=C_in)``. The images reach the network as the dataset
gives them (no ImageNet mean/std normalisation here).

:func:`load_pretrained` copies weights into a built network, except its head (:func:`head_parameter_names`:
the tensors whose shape depends on K): from a local state_dict file, or the library's own default
weights from its local cache (torchvision: ``<torch.hub.get_dir()>/checkpoints``; timm: the Hugging Face
cache), downloaded only when asked.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .errors import DataError, weights_only_reason

TIMM_PREFIX = "timm:"
# Sources of --pretrained other than a file.
LIBRARY_WEIGHTS = ("torchvision", "timm")
# torchvision models whose auxiliary classifiers are switched off (their forward would return a tuple).
_AUX_LOGITS = ("inception_v3", "googlenet")
HOW_TO_LIST = ("python -c \"import torchvision; print(torchvision.models.list_models(module=torchvision.models))\""
               " or, for timm:<name>, python -c \"import timm; print(timm.list_models())\"")


class PretrainedError(DataError):
    """Weights that cannot be used; the message starts with ``--pretrained``."""


@functools.cache
def torchvision_names() -> frozenset[str]:
    """The classification models of ``torchvision.models`` (not detection, segmentation, video)."""
    import torchvision

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def is_timm(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def check_name(name: str) -> str:
    """``name`` when it names a torchvision model or an available timm model; else ValueError saying why."""
    if is_timm(name):
        try:
            import timm
        except ImportError:
            raise ValueError(f"{name!r} needs the timm package, which is not installed (pip install timm)") from None
        if not timm.is_model(name[len(TIMM_PREFIX):]):
            raise ValueError(f"timm has no model {name[len(TIMM_PREFIX):]!r}; list them with {HOW_TO_LIST}")
        return name
    if name not in torchvision_names():
        raise ValueError(f"unknown model {name!r}: give one of the release's ResNets, a torchvision classification "
                         f"model or timm:<name>; list them with {HOW_TO_LIST}")
    return name


def _grey_to_rgb(module: nn.Module, args: tuple):
    """Forward pre-hook: [N, 1, H, W] -> [N, 3, H, W] (the same plane three times, no copy)."""
    x, *rest = args
    return (x.expand(-1, 3, -1, -1), *rest)


def build(name: str, num_classes: int, in_channels: int = 3, *, timm_pretrained_file: str | None = None,
          timm_download: bool = False) -> nn.Module:
    """The network ``name`` (torchvision, or ``timm:<name>``) with a fresh ``num_classes`` head, untrained
    weights; images [N, in_channels, H, W] -> logits [N, num_classes]. The ``timm_*`` arguments are
    :func:`load_pretrained`'s way into timm's own loader (which adapts the stem to ``in_channels``)."""
    if is_timm(name):
        import timm

        kwargs = {"num_classes": num_classes, "in_chans": in_channels}
        if timm_pretrained_file is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(timm_pretrained_file)})
        elif timm_download:
            kwargs["pretrained"] = True
        return timm.create_model(name[len(TIMM_PREFIX):], **kwargs)
    import torchvision

    if in_channels not in (1, 3):
        raise ValueError(f"model {name}: torchvision models take 3-channel (or grey) images, got {in_channels} "
                         f"channels")
    kwargs = {"weights": None, "num_classes": num_classes}
    if name in _AUX_LOGITS:
        kwargs.update(aux_logits=False, init_weights=True)
    model = torchvision.models.get_model(name, **kwargs)
    if in_channels == 1:
        model.register_forward_pre_hook(_grey_to_rgb)
    return model


def head_parameter_names(make, num_classes: int) -> frozenset[str]:
    """Names of the parameters whose shape depends on the number of classes (the classifier head), found by
    building ``make(num_classes)`` and ``make(num_classes + 1)`` on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        a = dict(make(num_classes).named_parameters())
        b = dict(make(num_classes + 1).named_parameters())
    return frozenset(n for n, p in a.items() if n not in b or b[n].shape != p.shape)


# ------------------------------------------------------------------------------------------------
# Pretrained weights
# ------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    """What :func:`transfer` copied: ``loaded`` names; ``skipped`` (name, reason) of file tensors left out;
    ``missing`` names of the network's tensors the file did not have (they keep their initial values)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        skipped = ", ".join(f"{n} ({why})" for n, why in self.skipped) or "none"
        return [f"--pretrained {self.source}: loaded {len(self.loaded)} tensors",
                f"--pretrained: not loaded from the file: {skipped}",
                f"--pretrained: missing from the file (left as initialised): {', '.join(self.missing) or 'none'}"]


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The tensors of a state_dict file (``torch.load(weights_only=True)``: a pickled callable is refused, never
    run). Accepts ``{"state_dict": ...}`` or ``{"model": ...}`` around it; a leading ``module.`` (DDP) is
    dropped from every key."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"--pretrained {path}: no such file")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # any failure of the restricted unpickler means "not usable"
        raise PretrainedError(f"--pretrained {path}: not a plain state_dict file, refused "
                              f"({type(err).__name__}: {weights_only_reason(err)}); nothing in it was run") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise PretrainedError(f"--pretrained {path}: not a state_dict (a dict of parameter names to tensors, "
                              f"optionally under 'state_dict' or 'model'); got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def transfer(model: nn.Module, state: dict[str, torch.Tensor], head: frozenset[str], source: str) -> LoadReport:
    """Copy every tensor of ``state`` whose name and shape the network has, except the head's, into ``model``."""
    own = model.state_dict()
    report = LoadReport(source)
    take = {}
    for name, t in state.items():
        if name in head:
            report.skipped.append((name, "head"))
        elif name not in own:
            report.skipped.append((name, "not in the network"))
        elif own[name].shape != t.shape:
            report.skipped.append((name, f"shape {list(t.shape)}, the network's {list(own[name].shape)}"))
        else:
            take[name] = t
    if not take:
        raise PretrainedError(f"--pretrained {source}: no tensor matches the network's names and shapes "
                              f"(file keys e.g. {sorted(state)[:3]}, network's e.g. {sorted(own)[:3]})")
    model.load_state_dict(take, strict=False)
    report.loaded = sorted(take)
    report.missing = [n for n in own if n not in take and n not in head]
    return report


def torchvision_cache_file(name: str) -> tuple[Path, str]:
    """(where torch.hub keeps ``name``'s default weights, their URL)."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url), weights.url


def torchvision_weights(name: str, download: bool) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict of ``name``'s default torchvision weights, their file) from the torch.hub cache; fetched
    there first only when ``download``."""
    path, url = torchvision_cache_file(name)
    if not path.is_file():
        if not download:
            raise PretrainedError(f"--pretrained torchvision: {name}'s default weights are not in the cache: "
                                  f"expected {path} (from {url}); add --download to fetch them, or put the "
                                  f"file there (TORCH_HOME sets the folder)")
        torch.hub.load_state_dict_from_url(url, progress=True, weights_only=True)
    return read_state_dict(path), str(path)


def timm_cached_file(timm_name: str) -> tuple[str | None, str]:
    """(the cached weights file of timm's default pretrained tag of ``timm_name`` or None, where it would be)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(timm_name) or {}
    cfg = cfg if isinstance(cfg, dict) else cfg.to_dict()
    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants, try_to_load_from_cache

        repo = cfg["hf_hub_id"]
        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str):
                return found, found
        return None, f"the Hugging Face cache {constants.HF_HUB_CACHE} (repository {repo})"
    if cfg.get("url"):
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg["url"])
        return (str(path) if path.is_file() else None), str(path)
    raise PretrainedError(f"--pretrained timm: timm has no pretrained weights for {timm_name}")


def load_pretrained(model: nn.Module, model_name: str, source: str, head: frozenset[str], *,
                    download: bool = False, make_timm=None) -> tuple[nn.Module, list[str]]:
    """Weights from ``source`` into ``model`` (all but the ``head`` tensors); returns (the network, report
    lines). ``source``: a state_dict file, ``torchvision`` or ``timm`` (the library's default weights).
    For ``timm`` the network is rebuilt by ``make_timm(pretrained_file=..., download=...)``."""
    if source == "torchvision":
        if is_timm(model_name) or model_name not in torchvision_names():
            raise PretrainedError(f"--pretrained torchvision: {model_name} is not a torchvision model")
        state, path = torchvision_weights(model_name, download)
        return model, transfer(model, state, head, f"torchvision ({path})").lines()
    if source == "timm":
        if not is_timm(model_name):
            raise PretrainedError(f"--pretrained timm: {model_name} is not a timm:<name> model")
        timm_name = model_name[len(TIMM_PREFIX):]
        cached, where = timm_cached_file(timm_name)
        if cached is None and not download:
            raise PretrainedError(f"--pretrained timm: {timm_name}'s pretrained weights are not cached: expected "
                                  f"in {where}; add --download to fetch them")
        model = make_timm(pretrained_file=cached, download=cached is None)
        return model, [f"--pretrained timm: {timm_name} from {cached or 'the Hugging Face hub'} "
                       f"(timm's loader; the {len(head)} head tensors are new)"]
    return model, transfer(model, read_state_dict(source), head, source).lines()
