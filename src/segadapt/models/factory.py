"""Any `nn.Module` from a Python factory, `package.module:function`, as an H1.

The factory is called with JSON keyword arguments; weights come from a safetensors file or a torch.save'd
state dict read with weights_only=True (never unpickled code). The module's output may be a tensor, a dict
with "out" (torchvision's convention) or an object with `.logits`; it is upsampled to the input size. Taps
are module paths. The spec (function, kwargs, weights sha256) is recorded so an adapted model can be rebuilt,
and the adapted weights are written as a plain state dict the factory's module loads with load_state_dict.

Calling a factory runs its code: segadapt only calls one the user named (on the command line, or trusted
when a model file names it; see models.loading.load_model), never one a file alone asks for.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from segadapt.chatter import hushed
from segadapt.errors import CheckpointError, ConfigError
from segadapt.models.contract import HookedModel
from segadapt.models.outputs import logits_of
from segadapt.models.pretrained import read_state_dict
from segadapt.models.taps import execution_order, flags_restored

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
SPEC_RE = re.compile(rf"^{_IDENT}(\.{_IDENT})*:{_IDENT}$")
META_KEY = "segadapt_factory"
_PREFIXES = ("net.", "module.")  # a segadapt model file's wrapper, DistributedDataParallel's


def is_factory_spec(text: str) -> bool:
    """`package.module:function`, the form a factory is named in (a path never matches: no / or .ext:)."""
    return bool(SPEC_RE.match(text))


@dataclass
class FactorySpec:
    """What rebuilds a factory model: the function, its keyword arguments, and the weights it started from."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    weights: str = ""
    weights_sha256: str = ""

    def to_meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str | Path) -> FactorySpec:
        try:
            return cls(str(meta["target"]), dict(meta.get("kwargs") or {}), str(meta.get("weights", "")),
                       str(meta.get("weights_sha256", "")))
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{source}: its factory metadata is damaged; re-export the model") from None


def parse_kwargs(kwargs: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Keyword arguments from a JSON object (text or already parsed); anything else is one clear line."""
    if kwargs is None or kwargs == "":
        return {}
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except ValueError as e:
            raise ConfigError(f"factory kwargs {kwargs!r}: not JSON ({e}); give an object like "
                              "'{\"classes\": 19}'") from None
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(f"factory kwargs must be a JSON object of name: value; got {kwargs!r}")
    return dict(kwargs)


def resolve(target: str) -> Any:
    """The callable `package.module:function` names, imported from sys.path."""
    if not is_factory_spec(target):
        raise ConfigError(f"factory {target!r}: expected package.module:function (dotted module, a colon, a name)")
    module_name, func_name = target.split(":")
    try:
        with hushed():  # what the user's module prints or warns on import: shown under --debug
            module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"factory {target}: cannot import {module_name} ({e}); install it or add its folder to "
                          "PYTHONPATH") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ConfigError(f"factory {target}: {module_name} has no callable {func_name}")
    return func


def call_factory(target: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """The module the factory returns; its errors come back as one line naming the call."""
    func = resolve(target)
    try:
        with hushed():  # e.g. a transformers load report from a factory wrapping from_pretrained
            net = func(**kwargs)
    except Exception as e:
        raise ConfigError(f"factory {target}(**{json.dumps(dict(kwargs))}) failed: {type(e).__name__}: {e}") from e
    if not isinstance(net, nn.Module):
        raise ConfigError(f"factory {target} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _strip_prefix(sd: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """Accept a state dict saved through a wrapper (every key under net. or module.) when that makes it fit."""
    for prefix in _PREFIXES:
        if set(sd) != own and sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_net_weights(net: nn.Module, path: str | Path, target: str) -> None:
    """Weights into the factory's module, strictly: every key present, every shape equal."""
    sd = read_state_dict(path, what=f"a state dict for {target}", flag="--weights")
    own = net.state_dict()
    sd = _strip_prefix(sd, set(own))
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = [k for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path}: weights do not fit {target} (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}, wrong shape {wrong[:3]}); check the factory's kwargs")
    net.load_state_dict(sd)


class FactoryModel(HookedModel):
    """A factory's module behind the contract: taps are its module paths, listed in execution order by one
    probe pass on `example` (which also reads the class count off the output)."""

    def __init__(self, net: nn.Module, spec: FactorySpec, head: str = "",
                 example: Sequence[int] = (1, 3, 64, 64)) -> None:
        x = torch.zeros(tuple(example), device=_device(net))
        order = execution_order(net, x)
        taps = [n for n, out in order if isinstance(out, torch.Tensor) and out.is_floating_point()]
        with flags_restored(net), torch.no_grad():
            num_classes = logits_of(net.eval()(x)).shape[1]
        super().__init__(net, num_classes, taps=taps, head=head, example=example)
        self.spec = spec


def _device(net: nn.Module) -> torch.device:
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def load_factory(target: str, weights: str | Path | None = None, kwargs: str | Mapping[str, Any] | None = None,
                 device: torch.device | str = "cpu", head: str = "") -> tuple[FactoryModel, dict[str, Any]]:
    """H1 from `package.module:function`, optional weights and JSON kwargs, in eval mode, with its metadata."""
    args = parse_kwargs(kwargs)
    net = call_factory(target, args)
    spec = FactorySpec(target, args)
    if weights:
        path = Path(weights)
        load_net_weights(net, path, target)
        spec.weights, spec.weights_sha256 = str(path), sha256_file(path)
    model = FactoryModel(net.to(device), spec, head=head).eval()
    return model, factory_meta(model)


def factory_meta(model: FactoryModel) -> dict[str, Any]:
    """Model-file metadata that rebuilds `model` (given the factory is trusted; see models.loading.load_model)."""
    return {"arch": "factory", "width": 1.0, "num_classes": model.num_classes, "factory": model.spec.to_meta(),
            "factory_head": model.head}


def rebuild(meta: Mapping[str, Any], source: str | Path) -> FactoryModel:
    """The factory model a model file's metadata names, with the factory's own initial weights (the caller
    loads the file's); only for factories the user trusts."""
    spec = FactorySpec.from_meta(meta.get("factory") or {}, source)
    return FactoryModel(call_factory(spec.target, spec.kwargs), spec, head=str(meta.get("factory_head", "")))


def save_factory_weights(model: FactoryModel, path: str | Path) -> Path:
    """The module's weights as a plain safetensors state dict (no net. prefix): `net.load_state_dict(
    safetensors.torch.load_file(path))` on the factory's module restores them. The spec rides in the header."""
    from segadapt.checkpoint import atomic_path

    path = Path(path)
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.net.state_dict().items()}
    with atomic_path(path, durable=True) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(model.spec.to_meta())})
    return path
