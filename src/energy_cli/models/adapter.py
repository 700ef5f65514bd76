"""Any nn.Module that maps images to logits, as a `Classifier` (penultimate features, then one linear layer).

The rule for finding the penultimate layer: the head is the nn.Linear that produces the logits, and the
features are that layer's input, flattened to (N, D). Which Linear is the head:

1. `head=NAME` (`backbone.head=NAME` on the command line): the submodule with that dotted name
   (`classifier.3`, `heads.head`), as `module.get_submodule(NAME)` finds it;
2. else `module.get_classifier()` when the module has that method and it returns an nn.Linear (timm models);
3. else the last nn.Linear in registration order (`module.named_modules()`): `fc` of a ResNet, the last
   layer of `classifier` of a VGG or MobileNet, `heads.head` of a ViT.

With `sample_shape` (C, H, W) one eval-mode forward of two images checks the rule: the module must return a
(2, num_classes) tensor and the head applied to the captured features must reproduce it; otherwise a
one-line UserError says what to change. The wrapped module stays whole (`adapter.net`, so the parameters are
named `net.<its own names>` in energy-ood checkpoints); a user's plain state_dict loads into `adapter.net`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from energy_cli.errors import UserError
from energy_cli.models.base import Classifier


def describe(module: nn.Module) -> str:
    """The module's class as users name it: `package.module.Class`."""
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def find_head(module: nn.Module, head: str | None = None) -> str:
    """The dotted name of the nn.Linear that produces the logits (the rule in the module docstring)."""
    if head:
        try:
            layer = module.get_submodule(head)
        except AttributeError:
            linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
            raise UserError(f"backbone.head={head}: {describe(module)} has no layer of that name; its linear layers "
                            f"are: {', '.join(linears[-5:]) or 'none'}") from None
        if not isinstance(layer, nn.Linear):
            raise UserError(f"backbone.head={head} is a {type(layer).__name__}, not an nn.Linear; name the linear "
                            "layer that produces the logits")
        return head
    get_classifier = getattr(module, "get_classifier", None)
    if callable(get_classifier):
        try:
            layer = get_classifier()
        except Exception:  # noqa: BLE001 - a user's method of that name may do anything
            layer = None
        if isinstance(layer, nn.Linear):
            for name, m in module.named_modules():
                if m is layer:
                    return name
    linears = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"{describe(module)} has no nn.Linear layer: energy-ood needs a linear last layer (the logits "
                        "are fc(features)); add one, or wrap the module so that it ends in one")
    return linears[-1]


class ModuleClassifier(Classifier):
    """A Classifier around `net`: features(x) = the input of the head layer (captured with a forward pre-hook
    while `net` runs), fc = that layer, forward = head(features(x)) (the head in fp32, also under autocast)."""

    def __init__(self, net: nn.Module, head: str | None = None, num_classes: int | None = None,
                 sample_shape: Sequence[int] | None = None):
        super().__init__()
        self.net = net
        self.head_name = find_head(net, head)
        fc = self.fc
        self.feature_dim = int(fc.in_features)
        self.num_classes = int(fc.out_features) if num_classes is None else int(num_classes)
        if sample_shape is not None:
            check_module(self, tuple(int(s) for s in sample_shape))

    @property
    def fc(self) -> nn.Linear:  # type: ignore[override]
        return self.net.get_submodule(self.head_name)  # type: ignore[return-value]

    def run_net(self, x: torch.Tensor) -> tuple[object, torch.Tensor | None]:
        """The net's own output on `x` and the input of its head layer during that call (None if not called)."""
        box: list[torch.Tensor] = []
        handle = self.fc.register_forward_pre_hook(lambda _module, args: box.append(args[0]))
        try:
            out = self.net(x)
        finally:
            handle.remove()
        return out, (box[-1] if box else None)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        _, feats = self.run_net(x)
        if feats is None:
            raise RuntimeError(f"the head layer {self.head_name} of {describe(self.net)} was not called")
        return feats.flatten(1)


def check_module(model: ModuleClassifier, sample_shape: tuple[int, ...]) -> None:
    """One eval-mode forward of two images of `sample_shape` (drawn from a private generator: the global RNG
    is untouched): the module returns (2, num_classes) logits, and the head applied to the captured features
    reproduces them. One-line UserError otherwise."""
    name = describe(model.net)
    x = torch.randn((2, *sample_shape), generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                out, feats = model.run_net(x)
            except Exception as exc:  # noqa: BLE001 - any failure of the user's forward on this input shape
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise UserError(f"{name} fails on a batch of 2x{'x'.join(map(str, sample_shape))} images "
                                f"({type(exc).__name__}: {first}); it must take the dataset's image shape") from None
            if not isinstance(out, torch.Tensor):
                raise UserError(f"{name} returns a {type(out).__name__}, not a tensor of logits; make forward() "
                                "return the logits (N, num_classes)")
            if tuple(out.shape) != (2, model.num_classes):
                raise UserError(f"{name} returns logits of shape {tuple(out.shape)}, expected (2, {model.num_classes})"
                                " (the dataset's number of classes)")
            if feats is None:
                raise UserError(f"the layer `{model.head_name}` of {name} is not called in its forward: name the "
                                "layer that produces the logits with backbone.head=NAME")
            logits = model.fc(feats.flatten(1).float()).float()
            scale = max(1.0, float(out.float().abs().max()))
            if feats.flatten(1).shape[1] != model.feature_dim or not torch.allclose(
                    logits, out.float(), rtol=1e-3, atol=1e-4 * scale):
                raise UserError(f"the layer feeding the logits of {name} is not `{model.head_name}` (its output is "
                                "not the module's output): name it with backbone.head=NAME")
    finally:
        model.train(was_training)


def as_classifier(module: nn.Module, num_classes: int | None = None, head: str | None = None,
                  sample_shape: Sequence[int] | None = None) -> Classifier:
    """`module` as a Classifier: unchanged when it is one, else wrapped in a ModuleClassifier (the head found by
    the rule of this module's docstring; `num_classes` None = the head's out_features; with `sample_shape`
    (C, H, W) checked by one forward)."""
    if isinstance(module, Classifier):
        return module
    if not isinstance(module, nn.Module):
        raise UserError(f"{type(module).__name__} is not a torch nn.Module; energy-ood needs a module that maps "
                        "images to logits")
    return ModuleClassifier(module, head=head, num_classes=num_classes, sample_shape=sample_shape)


def plain_module(model: nn.Module) -> nn.Module:
    """The module whose state_dict keys a user's own weight file uses: the wrapped net of an adapter, else the
    model itself."""
    return model.net if isinstance(model, ModuleClassifier) else model


def load_plain_weights(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Load a user's own state_dict into `plain_module(model)` (or, when its keys are the wrapper's own,
    `net.<name>`, into `model`); ValueError (the text of weight_mismatch) when its keys or shapes do not fit."""
    module = plain_module(model)
    problem = weight_mismatch(module, state_dict)
    if problem is not None and module is not model and weight_mismatch(model, state_dict) is None:
        module, problem = model, None
    if problem is not None:
        raise ValueError(problem)
    module.load_state_dict(state_dict, strict=False)


def weight_mismatch(module: nn.Module, state_dict: dict[str, torch.Tensor], shown: int = 3) -> str | None:
    """What keeps `state_dict` from loading into `module` (missing and unexpected keys, shape mismatches, the
    first `shown` of each), or None when it fits. BatchNorm's num_batches_tracked may be missing."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches (file vs model)", shapes)):
        if items:
            more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
            parts.append(f"{label} {', '.join(items[:shown])}{more}")
    return "; ".join(parts) or None
