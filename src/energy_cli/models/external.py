"""Backbones from elsewhere: any torchvision classification model (`backbone=torchvision backbone.arch=NAME`),
any timm model (`backbone=timm backbone.arch=NAME`, with the optional timm package), and any class or function
a config names with Hydra's `_target_` (`backbone=custom backbone._target_=my_pkg.nets.MyNet`). Each returns
a plain nn.Module that maps images to logits; models.build_model wraps it (models.adapter)."""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Mapping

from torch import nn

from energy_cli.errors import UserError

# keys of a backbone config that configure energy-ood, never passed to the model's constructor
OWN_KEYS = ("name", "arch", "head", "_target_")


def _first_line(exc: BaseException, limit: int = 300) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def close_names(name: str, known: list[str], n: int = 5) -> str:
    """A few known names close to `name` (difflib), for an error message."""
    close = difflib.get_close_matches(name, known, n=n, cutoff=0.5) or sorted(known)[:n]
    return ", ".join(close)


def _set_submodule(module: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, new)


def replace_first_conv(module: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Make the first nn.Conv2d that takes 3 channels take `in_channels` (same kernel, stride, padding); with
    pretrained weights and one channel its kernels become the sum over the RGB kernels (grey = R + G + B)."""
    for name, conv in module.named_modules():
        if isinstance(conv, nn.Conv2d) and conv.in_channels == 3:
            new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode)
            if pretrained and in_channels == 1 and conv.groups == 1:
                new.weight.data.copy_(conv.weight.data.sum(1, keepdim=True))
                if conv.bias is not None:
                    new.bias.data.copy_(conv.bias.data)
            _set_submodule(module, name, new)
            return
    raise UserError(f"{type(module).__name__} has no 3-channel nn.Conv2d to adapt to {in_channels}-channel images; "
                    "use a dataset with 3 channels or another backbone")


def replace_head(module: nn.Module, head: str, num_classes: int) -> None:
    """Replace the linear layer `head` by a freshly initialised one with `num_classes` outputs."""
    old = module.get_submodule(head)
    _set_submodule(module, head, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))


def torchvision_module(arch: str, num_classes: int, in_channels: int, image_size: int | None, download: bool,
                       head: str | None = None, **options: Any) -> nn.Module:
    """torchvision.models.get_model(arch) for `num_classes` classes and `in_channels` channels (vit_* models
    built for `image_size`). download=True: the DEFAULT (ImageNet) weights, then a new head for num_classes."""
    import torchvision

    from energy_cli.models.adapter import find_head

    known = torchvision.models.list_models(module=torchvision.models)
    if arch not in known:
        raise UserError(f"backbone.arch={arch} is not a torchvision classification model; close names: "
                        f"{close_names(arch, known)} (all: torchvision.models.list_models())")
    kwargs = dict(options)
    if arch.startswith("vit_") and image_size is not None:
        kwargs["image_size"] = int(image_size)
    try:
        if download:
            module = torchvision.models.get_model(arch, weights="DEFAULT", **kwargs)
        else:
            module = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    except UserError:
        raise
    except (OSError, RuntimeError) as exc:
        if download:
            raise UserError(f"cannot fetch the torchvision weights of {arch} ({type(exc).__name__}: "
                            f"{_first_line(exc)}); connect to the internet, or drop download=true to start from "
                            "random weights") from None
        raise UserError(f"torchvision cannot build {arch} ({_first_line(exc)})") from None
    except (TypeError, ValueError, AssertionError) as exc:
        raise UserError(f"torchvision cannot build {arch} with {sorted(kwargs) or 'its defaults'} "
                        f"({type(exc).__name__}: {_first_line(exc)})") from None
    if in_channels != 3:
        replace_first_conv(module, in_channels, pretrained=download)
    if download:
        name = find_head(module, head)
        if module.get_submodule(name).out_features != num_classes:
            replace_head(module, name, num_classes)
    return module


def import_timm():
    """The timm package, or a one-line UserError naming the extra that installs it."""
    try:
        import timm
    except ImportError:
        raise UserError("backbone=timm needs the timm package: pip install 'energy-ood[timm]'") from None
    return timm


def timm_module(arch: str, num_classes: int, in_channels: int, image_size: int | None, download: bool,
                **options: Any) -> nn.Module:
    """timm.create_model(arch, num_classes=..., in_chans=..., pretrained=download); vit_* / deit_* models are
    built for `image_size`."""
    timm = import_timm()
    kwargs = dict(options)
    if arch.startswith(("vit_", "deit")) and image_size is not None:
        kwargs["img_size"] = int(image_size)
    try:
        return timm.create_model(arch, pretrained=download, num_classes=num_classes, in_chans=in_channels, **kwargs)
    except RuntimeError as exc:
        if "Unknown model" in str(exc):
            raise UserError(f"backbone.arch={arch} is not a timm model; close names: "
                            f"{close_names(arch, timm.list_models())} (all: timm.list_models())") from None
        raise UserError(f"timm cannot build {arch} ({_first_line(exc)})") from None
    except (OSError, ImportError) as exc:
        raise UserError(f"cannot fetch the timm weights of {arch} ({type(exc).__name__}: {_first_line(exc)}); "
                        "connect to the internet, or drop download=true to start from random weights") from None
    except (TypeError, ValueError, AssertionError) as exc:
        raise UserError(f"timm cannot build {arch} with {sorted(kwargs) or 'its defaults'} "
                        f"({type(exc).__name__}: {_first_line(exc)})") from None


def _accepts(target: Any, parameter: str) -> bool:
    """Whether calling `target` takes the keyword `parameter` (named, or through **kwargs)."""
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == parameter or p.kind is p.VAR_KEYWORD for p in params)


def target_module(backbone: Mapping[str, Any], num_classes: int, in_channels: int) -> Any:
    """hydra.utils.instantiate of a backbone config with `_target_` (energy-ood's own keys left out), given
    num_classes and in_channels where the target's signature takes them."""
    from hydra.utils import get_object, instantiate

    target = backbone.get("_target_")
    if not target or not isinstance(target, str):
        raise UserError("backbone=custom needs backbone._target_=PACKAGE.MODULE.CLASS (an importable class or "
                        "function returning an nn.Module that maps images to logits)")
    try:
        obj = get_object(target)
    except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError, Hydra's own wrappers
        raise UserError(f"backbone._target_={target} cannot be imported ({_first_line(exc)}); check the name and "
                        "that its package is importable (installed, or on PYTHONPATH)") from None
    config = {k: v for k, v in backbone.items() if k not in OWN_KEYS or k == "_target_"}
    given = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
             if _accepts(obj, k) and k not in config}
    try:
        return instantiate(config, **given)
    except Exception as exc:  # noqa: BLE001 - whatever the user's constructor raises
        cause = exc.__cause__ or exc
        raise UserError(f"backbone._target_={target} failed to build with {sorted({*config, *given} - {'_target_'})}"
                        f" ({type(cause).__name__}: {_first_line(cause)})") from None
