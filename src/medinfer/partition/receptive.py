"""A network's tiling geometry, measured by walking its layers on a shape-only tensor.

:func:`network_geometry` runs the unmodified network once on a ``meta`` tensor
(no arithmetic, no memory) whose every operation is answered by a rule below.
Each activation carries its *reach*: per spatial axis, how far before (``lo``) and
after (``hi``) its voxel's own footprint in the input its value may depend on, and
its *jump*, the input voxels per voxel (the cumulative stride). Convolutions and
poolings grow the reach by their padding and kernel, transposed convolutions and
upsampling by the input taps they interpolate; concatenation and addition take the
larger reach of their operands (skip connections, residual branches). The reach
at the output is the halo a tile needs; the largest jump is the alignment tiles
must keep so that every strided layer samples the same grid as on the whole volume.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
import torch.nn.functional as F

from medinfer.partition import ops
from medinfer.partition.errors import PartitionGeometryError, UnpartitionableLayerError
from medinfer.partition.tiled import _META_NAMES, HANDLERS, tracking, unsupported


@dataclass(frozen=True)
class Reach:
    """Per spatial axis: dependence before/after a voxel's footprint, and input voxels per voxel."""

    lo: tuple[Fraction, ...]
    hi: tuple[Fraction, ...]
    jump: tuple[Fraction, ...]

    @classmethod
    def identity(cls, nd: int) -> Reach:
        z, one = (Fraction(0),) * nd, (Fraction(1),) * nd
        return cls(z, z, one)

    def merge(self, other: Reach) -> Reach:
        return Reach(tuple(map(max, self.lo, other.lo)), tuple(map(max, self.hi, other.hi)),
                     tuple(map(max, self.jump, other.jump)))


@dataclass(frozen=True)
class NetworkGeometry:
    """What tiling a network needs.

    Attributes:
        halo_lo, halo_hi: receptive-field reach of an output voxel before/after it, in
            input voxels, per axis (one-pass tiling crops this much around each tile).
        align: total stride per axis; tile cuts must be multiples of it.
        global_stats: layers whose statistics span the whole volume (instance/group
            norm, batch norm in training); if any, tiles alone cannot be exact and the
            network runs layer by layer.
        steps: partitioned operations in one forward pass (for progress).
        peak_ratio: largest ``(input + output elements) / input voxels`` of one operation.
        sum_ratio: ``Σ output elements / input voxels`` over all operations.
    """

    halo_lo: tuple[int, ...]
    halo_hi: tuple[int, ...]
    align: tuple[int, ...]
    global_stats: tuple[str, ...]
    steps: int
    peak_ratio: float
    sum_ratio: float


@dataclass
class _Trace:
    voxels: int
    global_stats: list[str] = field(default_factory=list)
    jumps: list[tuple[Fraction, ...]] = field(default_factory=list)
    steps: int = 0
    peak: float = 0.0
    total: float = 0.0


_TRACE: list[_Trace] = []


class TraceTensor(torch.Tensor):
    """A shape-only activation carrying its :class:`Reach`."""

    reach: Reach

    @staticmethod
    def __new__(cls, meta: torch.Tensor, reach: Reach) -> TraceTensor:
        t = torch.Tensor._make_subclass(cls, meta)
        t.reach = reach
        return t

    @classmethod
    def __torch_function__(cls, func: Callable[..., Any], types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        return _trace_op(func, args, kwargs or {})


def _meta(a: Any) -> Any:
    if isinstance(a, TraceTensor):
        with torch._C.DisableTorchFunctionSubclass():
            return torch.empty(a.shape, dtype=a.dtype, device="meta")
    if isinstance(a, torch.Tensor):
        return a.detach().to("meta")
    if isinstance(a, (list, tuple)):
        return type(a)(_meta(v) for v in a)
    return a


def _traced(values: Sequence[Any]) -> list[TraceTensor]:
    out: list[TraceTensor] = []
    for v in values:
        if isinstance(v, TraceTensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(t for t in v if isinstance(t, TraceTensor))
    return out


def _bound(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any],
           names: Sequence[str], defaults: Sequence[Any]) -> list[Any]:
    """Positional-or-keyword arguments ``names`` after the input, with defaults."""
    vals = list(args[1:]) + [None] * len(names)
    return [kwargs.get(n, vals[i] if i < len(args) - 1 else d)
            for i, (n, d) in enumerate(zip(names, defaults))]


def _windowed_reach(r: Reach, kind: str, k: Sequence[int], s: Sequence[int],
                    p: Sequence[int], d: Sequence[int]) -> Reach:
    lo, hi, jump = [], [], []
    for i, j in enumerate(r.jump):
        if kind == "conv":
            span = d[i] * (k[i] - 1) + 1
            lo.append(r.lo[i] + p[i] * j)
            hi.append(r.hi[i] + (span - p[i] - s[i]) * j)
            jump.append(j * s[i])
        elif kind == "transpose":
            lo.append(r.lo[i] + j * Fraction(k[i] - 1 - p[i], s[i]))
            hi.append(r.hi[i] + j * Fraction(p[i] + s[i] - 1, s[i]))
            jump.append(j / s[i])
        else:  # upsampling by s: nearest (k = 1) repeats a voxel, linear (k = 2) blends two
            grow = 2 * j if k[i] == 2 else j * Fraction(s[i] - 1, s[i])
            lo.append(r.lo[i] + grow)
            hi.append(r.hi[i] + grow)
            jump.append(j / s[i])
    return Reach(tuple(lo), tuple(hi), tuple(jump))


def _rule(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any],
          reach: Reach, nd: int, trace: _Trace) -> Reach:
    """The reach of ``func``'s output, recording whole-volume statistics."""
    t = ops._tuple
    if func in (F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d):
        w = args[1]
        stride, padding, dilation = _bound(func, args, kwargs, ["weight", "bias", "stride",
                                                                "padding", "dilation"],
                                           [None, None, 1, 0, 1])[2:]
        d = t(dilation, nd)
        spans = [di * (k - 1) + 1 for di, k in zip(d, w.shape[2:])]
        if padding == "same":
            pad = [(sp - 1) // 2 for sp in spans]
        else:
            pad = [0] * nd if padding == "valid" else list(t(padding, nd))
        return _windowed_reach(reach, "conv", w.shape[2:], t(stride, nd), pad, d)
    if func in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d):
        w = args[1]
        stride, padding = _bound(func, args, kwargs, ["weight", "bias", "stride", "padding"],
                                 [None, None, 1, 0])[2:]
        return _windowed_reach(reach, "transpose", w.shape[2:], t(stride, nd), t(padding, nd),
                               (1,) * nd)
    if func in (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d,
                F.avg_pool3d):
        kernel, stride = _bound(func, args, kwargs, ["kernel_size", "stride"], [1, None])
        stride = stride if stride not in (None, []) else kernel
        return _windowed_reach(reach, "conv", t(kernel, nd), t(stride, nd), (0,) * nd,
                               (1,) * nd)
    if func is F.interpolate:
        size, scale, mode = _bound(func, args, kwargs, ["size", "scale_factor", "mode"],
                                   [None, None, "nearest"])
        shape = args[0].shape[2:]
        if size is not None:
            f = [round(a / b) for a, b in zip(t(size, nd), shape)]
        else:
            f = [round(float(x)) for x in (scale if isinstance(scale, (list, tuple))
                                           else [scale] * nd)]
        linear = mode in ("linear", "bilinear", "trilinear")
        return _windowed_reach(reach, "up", [2 if linear else 1] * nd, f, (0,) * nd, (1,) * nd)
    if func is F.instance_norm:
        use_stats = _bound(func, args, kwargs, ["running_mean", "running_var", "weight", "bias",
                                                "use_input_stats"], [None] * 4 + [True])[4]
        if use_stats:
            trace.global_stats.append(_layer_name("InstanceNorm"))
    elif func is F.group_norm:
        trace.global_stats.append(_layer_name("GroupNorm"))
    elif func is F.batch_norm:
        if _bound(func, args, kwargs, ["running_mean", "running_var", "weight", "bias",
                                       "training"], [None] * 4 + [False])[4]:
            trace.global_stats.append(_layer_name("BatchNorm (training)"))
    return reach


_SHAPING = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d,
            F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.max_pool1d,
            F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.interpolate,
            torch.cat, torch.concat, torch.concatenate}


def _validate(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> None:
    """Refuse here what the partitioned rules would refuse (one-pass tiling never meets them)."""
    if func in (torch.cat, torch.concat, torch.concatenate):
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        if dim % args[0][0].dim() != 1:
            raise UnpartitionableLayerError(
                _layer_name("cat"), reason=f"cat only along channels (dim 1), not dim {dim}")
    if func is F.pad and any(kwargs.get("pad", args[1] if len(args) > 1 else ())):
        raise UnpartitionableLayerError(_layer_name("pad"), reason="explicit padding inside the network")


def _layer_name(default: str) -> str:
    from medinfer.partition.tiled import _MODULES

    return f"{_MODULES[-1][0]} ({_MODULES[-1][1]})" if _MODULES else default


def _trace_op(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    name = getattr(func, "__name__", str(func))
    if func not in HANDLERS:
        if name == "__get__" or name in _META_NAMES:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if name == "__repr__":
            return f"TraceTensor(shape={tuple(args[0].shape)})"
        raise unsupported(name)
    _validate(func, args, kwargs)
    traced = _traced(args)
    trace = _TRACE[-1]
    nd = traced[0].dim() - 2
    reach = traced[0].reach
    for other in traced[1:]:
        reach = reach.merge(other.reach)
    reach = _rule(func, args, kwargs, reach, nd, trace)
    if func in _SHAPING:
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*_meta(args), **_meta(kwargs))
    else:  # point-wise and normalization layers keep the shape of their input
        out = _meta(traced[0])
    if func in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.pad):
        return args[0]
    trace.steps += 1
    trace.jumps.append(reach.jump)
    n_in = sum(a.numel() for a in traced)
    trace.peak = max(trace.peak, (n_in + out.numel()) / trace.voxels)
    trace.total += out.numel() / trace.voxels
    if isinstance(out, torch.Tensor):
        if traced[0] is args[0] and (name.endswith("_") or name.startswith("__i")):  # in place
            args[0].reach = reach
            return args[0]
        return TraceTensor(out, reach)
    return out


def network_geometry(model: torch.nn.Module, in_channels: int,
                     shape: Sequence[int]) -> NetworkGeometry:
    """Walk ``model`` once on a shape-only input of ``(1, in_channels, *shape)``.

    Args:
        model: the network, unmodified (eval or train mode, as it will run).
        in_channels: its input channels.
        shape: a spatial shape the network accepts (sides divisible by its total stride).

    Raises:
        UnpartitionableLayerError: the network uses an operation with no partitioned rule.

    Example:
        >>> g = network_geometry(UNet(3, 1, 2, (4, 8, 16), (2, 2)), 1, (32, 32, 32))
        >>> g.align, g.global_stats != ()
        ((4, 4, 4), True)
    """
    nd = len(shape)
    x = TraceTensor(torch.empty((1, in_channels, *shape), device="meta"), Reach.identity(nd))
    trace = _Trace(voxels=math.prod(shape))
    _TRACE.append(trace)
    try:
        with tracking(model), torch.no_grad():
            y = model(x)
    except RuntimeError as exc:  # shape mismatches inside the network (odd sides, ...)
        raise PartitionGeometryError(
            f"the network does not run on a volume of {tuple(shape)} ({exc}); make the sides "
            "multiples of its total stride") from exc
    finally:
        _TRACE.pop()
    if not isinstance(y, TraceTensor):
        raise UnpartitionableLayerError(type(y).__name__, reason="output is not one tensor")
    if tuple(y.shape[2:]) != tuple(shape):
        raise UnpartitionableLayerError(
            type(model).__name__, reason=f"output {tuple(y.shape[2:])} is not voxel-aligned "
                                         f"with the input {tuple(shape)} (dense prediction only)")
    align = []
    for axis in range(nd):
        ints = [int(j[axis]) for j in trace.jumps if j[axis].denominator == 1]
        align.append(math.lcm(*ints) if ints else 1)
    return NetworkGeometry(
        halo_lo=tuple(max(0, math.ceil(v)) for v in y.reach.lo),
        halo_hi=tuple(max(0, math.ceil(v)) for v in y.reach.hi),
        align=tuple(align), global_stats=tuple(trace.global_stats), steps=trace.steps,
        peak_ratio=trace.peak, sum_ratio=trace.total)
