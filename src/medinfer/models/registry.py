"""Model registry: name -> constructor, populated by explicit decorator use.

Example:
    >>> from medinfer.models import create_model, list_models
    >>> list_models("res*")
    ['resunet']
    >>> net = create_model("resunet", in_channels=3, out_channels=1)
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from medinfer.errors import MedinferError

ModelFactory = Callable[..., torch.nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture.

    Attributes:
        name: registry key, e.g. ``"resunet"``.
        factory: builds the ``torch.nn.Module``; takes ``in_channels``, ``out_channels``
            and architecture keyword arguments.
        task: what the network's output means (``"segmentation"`` for now).
        spatial_dims: 2 or 3.
        defaults: default keyword arguments merged under the caller's.
    """

    name: str
    factory: ModelFactory
    task: str
    spatial_dims: int
    defaults: dict[str, object] = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, task: str, spatial_dims: int, **defaults: object
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``factory`` under ``name``.

    Args:
        name: unique registry key.
        task: output kind, e.g. ``"segmentation"``.
        spatial_dims: 2 for images, 3 for volumes.
        **defaults: default architecture arguments.
    """

    def wrap(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, factory, task, spatial_dims, dict(defaults))
        return factory

    return wrap


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; raises :class:`MedinferError` if unknown."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(list_models())
        raise MedinferError(f"unknown model {name!r}; registered: {known}") from None


def create_model(
    name: str, *, in_channels: int, out_channels: int, **kwargs: object
) -> torch.nn.Module:
    """Build a registered network with its defaults overridden by ``kwargs``.

    Args:
        name: registry key (see :func:`list_models`).
        in_channels: input channels (3 for RGB endoscopy).
        out_channels: output channels (1 for a binary mask's logit).
        **kwargs: architecture arguments, e.g. ``channels=(16, 32, 64)``.
    """
    entry = get_entry(name)
    args = {**entry.defaults, **kwargs}
    return entry.factory(in_channels=in_channels, out_channels=out_channels, **args)
