"""The partitioned tensor: a ``(N, C, *spatial)`` tensor whose blocks live in a store.

A :class:`TiledTensor` stands in for an activation while an unmodified network runs:
``torch`` hands every operation on it to :func:`dispatch` (``__torch_function__``),
which looks up the operation's partitioned rule in :data:`HANDLERS` (filled by
:mod:`medinfer.partition.ops`). Where the blocks live and how a block's halo is
fetched is the job of a :class:`Context`: all blocks in one process (RAM or
memory-mapped files, :mod:`medinfer.partition.store`) or one block per rank with
halo exchange (:mod:`medinfer.partition.comm`). The wrapper itself holds no data:
it is a ``meta`` tensor of the global shape, so shape checks in the network's own
code (``x.shape``, ``x.dim()``) see the whole volume.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch

from medinfer.partition.errors import UnpartitionableLayerError
from medinfer.partition.geometry import BlockIndex, Interval, Layout, Region

Handler = Callable[..., Any]
Need = Callable[[Interval], Interval]

#: operation -> partitioned rule, filled by :mod:`medinfer.partition.ops`.
HANDLERS: dict[Callable[..., Any], Handler] = {}


class Store(Protocol):
    """Where one activation's blocks live."""

    layout: Layout
    batch: int
    channels: int
    dtype: torch.dtype

    def read(self, region: Region) -> torch.Tensor:
        """Voxels of ``region`` (inside the volume), shape ``(N, C, *region sizes)``."""

    def read_into(self, out: torch.Tensor, region: Region) -> None:
        """Copy the voxels of ``region`` held here into ``out`` (shaped like ``region``)."""

    def write(self, idx: BlockIndex, block: torch.Tensor) -> None:
        """Store block ``idx``."""


class Context(Protocol):
    """How blocks are placed, fetched with halos, and reduced."""

    def blocks(self, layout: Layout) -> Sequence[BlockIndex]:
        """The blocks of ``layout`` this process computes."""

    def empty(self, layout: Layout, batch: int, channels: int, dtype: torch.dtype) -> Store:
        """A store for a new activation."""

    def fetch(self, x: TiledTensor, out_layout: Layout, idx: BlockIndex,
              needs: Sequence[Need], fill: str) -> torch.Tensor:
        """Input voxels output block ``idx`` depends on, ``fill`` (zeros | replicate) outside the volume."""

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum of ``t`` over every process holding blocks (identity in one process)."""

    def step(self, name: str) -> None:
        """One layer done (progress reporting)."""


class TiledTensor(torch.Tensor):
    """A partitioned activation; see the module docstring.

    Attributes:
        store: the blocks.
        ctx: the context that computes and exchanges them.
    """

    store: Store
    ctx: Context

    @staticmethod
    def __new__(cls, store: Store, ctx: Context) -> TiledTensor:
        meta = torch.empty((store.batch, store.channels, *store.layout.shape),
                           dtype=store.dtype, device="meta")
        t = torch.Tensor._make_subclass(cls, meta)
        t.store = store
        t.ctx = ctx
        return t

    @property
    def layout(self) -> Layout:
        return self.store.layout

    def block(self, idx: BlockIndex) -> torch.Tensor:
        """Block ``idx`` as a plain tensor."""
        return self.store.read(self.store.layout.region(idx))

    @classmethod
    def __torch_function__(cls, func: Callable[..., Any], types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        return dispatch(func, args, kwargs or {})


_META_NAMES = {"dim", "size", "__len__", "is_floating_point", "is_contiguous", "numel",
               "element_size", "get_device", "__format__"}


def dispatch(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """Run ``func`` on partitioned arguments by its rule; metadata queries see the global shape."""
    handler = HANDLERS.get(func)
    if handler is not None:
        return handler(func, *args, **kwargs)
    name = getattr(func, "__name__", str(func))
    if name == "__get__" or name in _META_NAMES:
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)
    if name == "__repr__":
        t = args[0]
        return f"TiledTensor(shape={tuple(t.shape)}, grid={t.layout.grid})"
    raise unsupported(name)


def unsupported(op: str) -> UnpartitionableLayerError:
    """The error for operation ``op`` reached inside the module now running."""
    path, cls = _MODULES[-1] if _MODULES else ("", "")
    layer = f"{cls} ({op})" if cls else op
    return UnpartitionableLayerError(layer, path, "no partitioned rule for this operation")


def handles(*funcs: Callable[..., Any]) -> Callable[[Handler], Handler]:
    """Register a rule for ``funcs``; the rule is called as ``rule(func, *args, **kwargs)``."""

    def register(rule: Handler) -> Handler:
        for f in funcs:
            HANDLERS[f] = rule
        return rule

    return register


# (path, class name) of the modules being run, innermost last: names the layer in errors.
_MODULES: list[tuple[str, str]] = []


@contextlib.contextmanager
def tracking(model: torch.nn.Module) -> Iterator[None]:
    """Record which module is running so an unsupported operation can name its layer."""
    names = {id(m): n for n, m in model.named_modules()}

    def pre(module: torch.nn.Module, _args: Any) -> None:
        _MODULES.append((names.get(id(module), ""), type(module).__name__))

    def post(_module: torch.nn.Module, _args: Any, _out: Any) -> None:
        if _MODULES:
            _MODULES.pop()

    h1 = torch.nn.modules.module.register_module_forward_pre_hook(pre)
    h2 = torch.nn.modules.module.register_module_forward_hook(post)
    depth = len(_MODULES)
    try:
        yield
    finally:
        h1.remove()
        h2.remove()
        del _MODULES[depth:]


def tiled_args(values: Sequence[Any]) -> list[TiledTensor]:
    """The partitioned tensors among ``values`` (one level deep into lists and tuples)."""
    found: list[TiledTensor] = []
    for v in values:
        if isinstance(v, TiledTensor):
            found.append(v)
        elif isinstance(v, (list, tuple)):
            found.extend(t for t in v if isinstance(t, TiledTensor))
    return found
