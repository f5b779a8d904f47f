"""Per-finding heat-maps of a classification network with Captum: Grad-CAM and LRP.

Grad-CAM (``captum.attr.LayerGradCam``) weighs the last feature maps (the DenseNet's
``features`` block, ending in ``norm5``) by their pooled gradients and is upsampled to the
input with ``LayerAttribution.interpolate``. LRP (``captum.attr.LRP``) redistributes the
finding's logit back to the pixels layer by layer.

Captum's LRP attaches one rule per leaf module and propagates relevance through tensor
hooks; three things in MONAI's DenseNet need care, all done on a copy of the network
(:func:`lrp_ready`), never on the caller's:

* activations run out-of-place on the copy, so no in-place op rewrites a tensor that
  Captum's hooks hold (with Captum 0.9 the result is the same either way; it is a safeguard);
* ``nn.Flatten`` has no default rule: it is a reshape, so ``EpsilonRule`` (z = x) passes
  relevance through it unchanged;
* each dense layer returns ``torch.cat([x, new_features])`` inside its ``forward``: a
  function call is invisible to LRP, so the relevance that reaches ``x`` through the
  concatenation would be multiplied by ``x`` a second time at ``x``'s input hook (it shares
  that hook with ``norm1``). The copy runs the concatenation through a leaf
  :class:`Concat` module with ``EpsilonRule`` (the way Captum handles residual sums with
  its ``Addition_Module``), so every path into ``x`` arrives in the same units. Measured on
  the tiny DenseNet: with the plain ``torch.cat`` the relevance summed to -0.09 for a logit
  of 0.27; through :class:`Concat` it sums to the logit (delta ~3e-8).

Batch norms keep Captum's default ``EpsilonRule``; convolutions, pools and the linear
head too (LRP-epsilon throughout). Relevance is conserved exactly only while the batch
norms have no effective bias: on a trained network each one's ``beta - mean * gamma / std``
absorbs or injects relevance, so the maps are relative evidence, and each map's
convergence delta (logit minus summed relevance) is reported with it. Captum's
``IdentityRule`` for batch norm cannot stand in: a dense layer's ``norm1`` shares its input
with the concatenation, and an IdentityRule input hook replaces the whole gradient of that
shared tensor, dropping the concatenation's share (routed through a separate copy module
instead, it returned NaN maps on the trained DenseNet-121).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medinfer.errors import MedinferError

log = logging.getLogger(__name__)
GRADCAM = "Grad-CAM (captum LayerGradCam on {layer}, bilinear upsampling)"
LRP_METHOD = "LRP-epsilon (captum LRP; EpsilonRule on every layer, concatenations as modules)"


class Concat(nn.Module):
    """Channel concatenation as a leaf module, so Captum's LRP can give it a rule."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], 1)


class _ConcatDenseLayer(nn.Module):
    """A MONAI ``_DenseLayer`` (same ``layers``, same weights) concatenating through :class:`Concat`."""

    def __init__(self, layers: nn.Sequential) -> None:
        super().__init__()
        self.layers = layers
        self.concat = Concat()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.concat(x, self.layers(x))


@dataclass(frozen=True)
class HeatMaps:
    """Heat-maps of one image for one class, both of shape (H, W) = the network input's.

    Attributes:
        gradcam: non-negative Grad-CAM map (ReLU of the weighted feature maps).
        lrp: signed LRP relevance summed over channels (positive: evidence for the class).
        lrp_delta: LRP's convergence delta (logit minus total relevance; ~0 when conserved).
    """

    gradcam: np.ndarray
    lrp: np.ndarray
    lrp_delta: float


def _out_of_place(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.ReLU | nn.ReLU6 | nn.ELU | nn.LeakyReLU | nn.Dropout):
            m.inplace = False


def lrp_ready(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` that Captum's LRP can run (see the module docstring)."""
    from monai.networks.nets.densenet import _DenseLayer

    out = copy.deepcopy(net).eval()
    _out_of_place(out)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _DenseLayer):
                setattr(parent, name, _ConcatDenseLayer(child.layers))
    return out


def attach_rules(net: nn.Module) -> None:
    """Give the leaf modules without a Captum default their rule (Captum drops rules after each call)."""
    from captum.attr._utils.lrp_rules import EpsilonRule

    for m in net.modules():
        if isinstance(m, Concat | nn.Flatten):
            m.rule = EpsilonRule()


def gradcam_layer(net: nn.Module, name: str = "features") -> nn.Module:
    """The submodule whose output Grad-CAM explains.

    The default, a DenseNet's ``features``, ends in ``norm5``: the last feature maps, 1/32
    of the input (4x4 for 128x128, 2x2 for 64x64, where the upsampled map is nearly flat).
    ``features.denseblock3`` (1/16, before the last transition's pooling) trades some class
    specificity for twice the resolution.
    """
    try:
        return net.get_submodule(name)
    except AttributeError as exc:
        raise MedinferError(f"{type(net).__name__} has no submodule {name!r} to run Grad-CAM on") from exc


class Explainer:
    """Grad-CAM and LRP for one network, reused across images and classes.

    Example::

        ex = Explainer(artifact.load_network())
        maps = ex.heatmaps(x, targets=[2, 5])    # x: (1, C, H, W) float32 network input
        maps[0].gradcam.shape == (H, W)
    """

    def __init__(self, net: nn.Module, layer: str = "features") -> None:
        from captum.attr import LRP, LayerGradCam

        self.net = copy.deepcopy(net).eval()
        _out_of_place(self.net)
        self._gradcam = LayerGradCam(self.net, gradcam_layer(self.net, layer))
        self.methods = {"gradcam": GRADCAM.format(layer=layer), "lrp": LRP_METHOD}
        self._lrp_net = lrp_ready(net)
        attach_rules(self._lrp_net)
        self._lrp = LRP(self._lrp_net)

    def gradcam(self, x: torch.Tensor, targets: Sequence[int]) -> np.ndarray:
        """(T, H, W) non-negative Grad-CAM of each of ``targets`` for one (1, C, H, W) input."""
        from captum.attr import LayerAttribution

        batch = x.expand(len(targets), *x.shape[1:])
        cam = self._gradcam.attribute(batch, target=list(targets), relu_attributions=True)
        up = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
        return up[:, 0].detach().numpy().astype(np.float32)

    def lrp(self, x: torch.Tensor, targets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(T, H, W) LRP relevance of each target (summed over channels) and (T,) convergence deltas."""
        attach_rules(self._lrp_net)
        batch = x.expand(len(targets), *x.shape[1:]).clone().requires_grad_(True)
        rel, delta = self._lrp.attribute(batch, target=list(targets), return_convergence_delta=True)
        return (rel.sum(1).detach().numpy().astype(np.float32),
                delta.detach().reshape(-1).numpy().astype(np.float64))

    def heatmaps(self, x: torch.Tensor | np.ndarray, targets: Sequence[int]) -> list[HeatMaps]:
        """Both heat-maps of each class in ``targets`` for one input (1, C, H, W).

        The classes run as one batch of copies of ``x`` (eval mode: samples are independent),
        one forward and one backward pass per method.
        """
        t = torch.as_tensor(np.asarray(x, np.float32) if isinstance(x, np.ndarray) else x)
        if t.ndim != 4 or t.shape[0] != 1:
            raise ValueError(f"expected one input of shape (1, C, H, W), got {tuple(t.shape)}")
        if not targets:
            return []
        rel, delta = self.lrp(t, targets)
        cams = self.gradcam(t, targets)
        if not (np.isfinite(rel).all() and np.isfinite(cams).all()):
            log.warning("non-finite attributions for targets %s (LRP-epsilon divides by activations "
                        "close to zero)", list(targets))
        return [HeatMaps(cams[i], rel[i], float(delta[i])) for i in range(len(targets))]
