"""Partitioned rules of the operations U-Nets are made of.

Each rule computes an output block from the input voxels it depends on: windowed
layers (convolution, transposed convolution, pooling, upsampling) fetch their block
grown by exactly the halo :mod:`medinfer.partition.geometry` gives; normalizations
with whole-volume statistics (instance, group, batch norm in training) sum
``Σx`` and ``Σ(x-μ)²`` over all blocks (``Context.all_reduce`` across ranks) before
normalizing any; point-wise operations and channel concatenation work block by block.
Any other operation reaching a :class:`TiledTensor` raises
:class:`UnpartitionableLayerError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from medinfer.partition import geometry as geo
from medinfer.partition.errors import UnpartitionableLayerError
from medinfer.partition.geometry import Layout
from medinfer.partition.tiled import Need, TiledTensor, handles, tiled_args


def _tuple(v: Any, n: int) -> tuple[int, ...]:
    if isinstance(v, (list, tuple)):
        return tuple(int(x) for x in v) if len(v) == n else tuple(int(v[0]) for _ in range(n))
    return (int(v),) * n


def windowed(x: TiledTensor, out_layout: Layout, needs: Sequence[Need], fill: str,
             compute: Callable[[torch.Tensor, geo.Region, geo.Region], torch.Tensor],
             channels: int, name: str) -> TiledTensor:
    """Compute every output block of ``out_layout`` from its input window.

    Args:
        x: the input.
        out_layout: blocks of the output.
        needs: per axis, output interval -> input interval.
        fill: value outside the volume (``zeros`` = zero padding, ``replicate`` = edge).
        compute: ``(window, out_region, in_region) -> block``.
        channels: output channels.
        name: the layer, for progress.
    """
    ctx = x.ctx
    out = ctx.empty(out_layout, x.store.batch, channels, x.store.dtype)
    for idx in ctx.blocks(out_layout):
        window = ctx.fetch(x, out_layout, idx, needs, fill)
        o_reg = out_layout.region(idx)
        i_reg = tuple(need(iv) for need, iv in zip(needs, o_reg))
        out.write(idx, compute(window, o_reg, i_reg))
    ctx.step(name)
    return TiledTensor(out, ctx)


def _crop(y: torch.Tensor, starts: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
    for axis, (s, n) in enumerate(zip(starts, sizes)):
        y = y.narrow(axis + 2, s, n)
    return y


@handles(F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d)
def conv(func: Callable[..., torch.Tensor], input: TiledTensor, weight: torch.Tensor,
         bias: torch.Tensor | None = None, stride: Any = 1, padding: Any = 0,
         dilation: Any = 1, groups: int = 1) -> TiledTensor:
    """Convolution: halo ``padding`` before and ``span - padding - stride`` after each block."""
    nd = input.dim() - 2
    stride, dilation = _tuple(stride, nd), _tuple(dilation, nd)
    spans = tuple(d * (k - 1) + 1 for d, k in zip(dilation, weight.shape[2:]))
    if padding == "valid":
        pads = [(0, 0)] * nd
    elif padding == "same":
        pads = [((s - 1) // 2, s - 1 - (s - 1) // 2) for s in spans]
    else:
        pads = [(p, p) for p in _tuple(padding, nd)]
    layout = input.layout
    out_layout = Layout(tuple(
        geo.strided_cuts(c, s, geo.conv_out_size(c[-1], s, pl, ph, sp), "convolution")
        for c, s, (pl, ph), sp in zip(layout.cuts, stride, pads, spans)))
    needs = [partial(geo.conv_need, stride=s, pad_lo=pl, span=sp)
             for s, (pl, _), sp in zip(stride, pads, spans)]

    def compute(window: torch.Tensor, _o: geo.Region, _i: geo.Region) -> torch.Tensor:
        if _use_onednn(window, weight):
            return torch.mkldnn_convolution(window.contiguous(), weight.contiguous(), bias,
                                            (0,) * nd, stride, dilation, groups)
        return func(window, weight, bias, stride, 0, dilation, groups)

    return windowed(input, out_layout, needs, "zeros", compute, weight.shape[0], "conv")


def _use_onednn(window: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether to call oneDNN's convolution directly.

    torch picks its slow reference kernel (``slow_conv3d``) for a float32 CPU input with
    ``N·C·D·H <= 20480`` and a 3-wide kernel: exactly the size of a tile's low-resolution
    layers (1 x 16 x 34 x 34), ten times slower per voxel than oneDNN, which the
    whole-volume pass gets for the same layer. Same arithmetic, the faster kernel.
    """
    return (window.device.type == "cpu" and window.dtype == torch.float32
            and weight.dtype == torch.float32 and window.dim() == 5
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


@handles(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
def conv_transpose(func: Callable[..., torch.Tensor], input: TiledTensor, weight: torch.Tensor,
                   bias: torch.Tensor | None = None, stride: Any = 1, padding: Any = 0,
                   output_padding: Any = 0, groups: int = 1, dilation: Any = 1) -> TiledTensor:
    """Transposed convolution: each block reads the input voxels whose kernels reach it, then crops."""
    nd = input.dim() - 2
    stride, pad = _tuple(stride, nd), _tuple(padding, nd)
    out_pad, kernel = _tuple(output_padding, nd), tuple(weight.shape[2:])
    if any(d != 1 for d in _tuple(dilation, nd)) or any(k < s for k, s in zip(kernel, stride)):
        raise UnpartitionableLayerError(
            "ConvTranspose", reason="needs dilation 1 and kernel >= stride")
    layout = input.layout
    out_layout = Layout(tuple(
        geo.upscaled_cuts(c, s, geo.conv_transpose_out_size(c[-1], s, p, k, op))
        for c, s, p, k, op in zip(layout.cuts, stride, pad, kernel, out_pad)))
    needs = [partial(geo.conv_transpose_need, stride=s, pad=p, kernel=k)
             for s, p, k in zip(stride, pad, kernel)]

    def compute(window: torch.Tensor, o_reg: geo.Region, i_reg: geo.Region) -> torch.Tensor:
        y = func(window, weight, bias, stride, 0, 0, groups, 1)
        starts = [o[0] - s * i[0] + p for o, i, s, p in zip(o_reg, i_reg, stride, pad)]
        return _crop(y, starts, [o[1] - o[0] for o in o_reg])

    return windowed(input, out_layout, needs, "zeros", compute,
                    weight.shape[1] * groups, "conv_transpose")


def _pool(func: Callable[..., torch.Tensor], input: TiledTensor, kernel_size: Any,
          stride: Any, padding: Any, ceil_mode: bool, extra: dict[str, Any]) -> TiledTensor:
    nd = input.dim() - 2
    kernel = _tuple(kernel_size, nd)
    stride = _tuple(stride if stride not in (None, []) else kernel_size, nd)
    dilation = _tuple(extra.pop("dilation", 1), nd)
    if any(_tuple(padding, nd)) or ceil_mode or extra.get("return_indices"):
        raise UnpartitionableLayerError(
            "Pool", reason="padding, ceil_mode and return_indices are not supported")
    spans = tuple(d * (k - 1) + 1 for d, k in zip(dilation, kernel))
    layout = input.layout
    out_layout = Layout(tuple(
        geo.strided_cuts(c, s, geo.conv_out_size(c[-1], s, 0, 0, sp), "pooling")
        for c, s, sp in zip(layout.cuts, stride, spans)))
    needs = [partial(geo.conv_need, stride=s, pad_lo=0, span=sp) for s, sp in zip(stride, spans)]
    kw = {k: v for k, v in extra.items() if k != "return_indices"}
    if dilation != (1,) * nd:
        kw["dilation"] = dilation

    def compute(window: torch.Tensor, _o: geo.Region, _i: geo.Region) -> torch.Tensor:
        return func(window, kernel, stride, 0, **kw)

    return windowed(input, out_layout, needs, "zeros", compute, input.store.channels, "pool")


@handles(F.max_pool1d, F.max_pool2d, F.max_pool3d)
def max_pool(func: Callable[..., torch.Tensor], input: TiledTensor, kernel_size: Any,
             stride: Any = None, padding: Any = 0, dilation: Any = 1, ceil_mode: bool = False,
             return_indices: bool = False) -> TiledTensor:
    """Max pooling without padding."""
    return _pool(func, input, kernel_size, stride, padding, ceil_mode,
                 {"dilation": dilation, "return_indices": return_indices})


@handles(F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)
def avg_pool(func: Callable[..., torch.Tensor], input: TiledTensor, kernel_size: Any,
             stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
             count_include_pad: bool = True, divisor_override: int | None = None) -> TiledTensor:
    """Average pooling without padding."""
    extra: dict[str, Any] = {"count_include_pad": count_include_pad}
    if divisor_override is not None:
        extra["divisor_override"] = divisor_override
    return _pool(func, input, kernel_size, stride, padding, ceil_mode, extra)


@handles(F.interpolate)
def interpolate(func: Callable[..., torch.Tensor], input: TiledTensor, size: Any = None,
                scale_factor: Any = None, mode: str = "nearest", align_corners: bool | None = None,
                recompute_scale_factor: bool | None = None, antialias: bool = False) -> TiledTensor:
    """Integer-factor upsampling, nearest or (bi/tri)linear with ``align_corners=False``."""
    nd = input.dim() - 2
    shape = input.layout.shape
    if size is not None:
        sizes = _tuple(size, nd)
        factors_f = [s / n for s, n in zip(sizes, shape)]
    else:
        factors_f = [float(f) for f in (scale_factor if isinstance(scale_factor, (list, tuple))
                                        else [scale_factor] * nd)]
    factors = tuple(int(round(f)) for f in factors_f)
    linear = mode in ("linear", "bilinear", "trilinear")
    if (any(abs(f - g) > 1e-9 or g < 1 for f, g in zip(factors_f, factors)) or antialias
            or mode not in ("nearest", "nearest-exact", "linear", "bilinear", "trilinear")
            or (linear and align_corners)):
        raise UnpartitionableLayerError(
            f"interpolate(mode={mode!r})",
            reason="only integer factors, nearest or linear with align_corners=False")
    out_layout = Layout(tuple(geo.upscaled_cuts(c, f, c[-1] * f)
                              for c, f in zip(input.layout.cuts, factors)))
    needs = [partial(geo.interpolate_need, factor=f, linear=linear) for f in factors]

    def compute(window: torch.Tensor, o_reg: geo.Region, i_reg: geo.Region) -> torch.Tensor:
        y = func(window, scale_factor=factors, mode=mode,
                 align_corners=align_corners if linear else None)
        starts = [o[0] - f * i[0] for o, i, f in zip(o_reg, i_reg, factors)]
        return _crop(y, starts, [o[1] - o[0] for o in o_reg])

    return windowed(input, out_layout, needs, "replicate" if linear else "zeros", compute,
                    input.store.channels, "interpolate")


def _stats_reducer(kind: str, batch: int, channels: int,
                   groups: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """How per-(N, C) sums combine into the statistic's sums, and how many voxels each sum covers."""
    if kind == "instance":
        return (lambda s: s), 1
    if kind == "group":
        per = channels // groups
        return (lambda s: s.view(batch, groups, per).sum(-1, keepdim=True)
                .expand(batch, groups, per).reshape(batch, channels)), per
    return (lambda s: s.sum(0, keepdim=True).expand(batch, channels)), batch


def normalize(x: TiledTensor, kind: str, weight: torch.Tensor | None, bias: torch.Tensor | None,
              eps: float, groups: int = 1) -> tuple[TiledTensor, torch.Tensor, torch.Tensor]:
    """Normalize with statistics over the whole volume, in one pass over the blocks.

    Each block contributes its voxel count ``n``, ``n·μ_b`` and ``M2_b + n·μ_b²`` (from
    ``torch.var_mean``, accurate in float32), summed in float64 over blocks and ranks;
    ``var = (Σ(M2_b + n·μ_b²) - N·μ²) / N``.

    Args:
        kind: ``instance`` (per sample and channel), ``group`` or ``batch`` (per channel).

    Returns:
        The output, and the per-(N, C) mean and biased variance used.
    """
    ctx, store = x.ctx, x.store
    b, c = store.batch, store.channels
    reduce, per = _stats_reducer(kind, b, c, groups)
    dims = tuple(range(2, 2 + len(x.layout.shape)))
    own = ctx.blocks(x.layout)
    device = x.block(own[0]).device if own else torch.device("cpu")
    parts = torch.zeros(2, b, c, dtype=torch.float64, device=device)
    for i in own:
        blk = x.block(i)
        var_b, mean_b = torch.var_mean(blk, dim=dims, correction=0)
        n = math.prod(blk.shape[2:])
        mean_b = mean_b.double()
        parts = parts + torch.stack([n * mean_b, n * (var_b.double() + mean_b * mean_b)])
    parts = ctx.all_reduce(parts)
    count = per * math.prod(x.layout.shape)
    mean = reduce(parts[0]) / count
    var = (reduce(parts[1]) / count - mean * mean).clamp_min(0)
    scale = (var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight.double()
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias.double()
    view = (b, c, *(1,) * len(dims))
    a, s = scale.to(store.dtype).view(view), shift.to(store.dtype).view(view)
    return blockwise(lambda blk: torch.addcmul(s, blk, a), x, name=f"{kind}_norm"), mean, var


@handles(F.instance_norm)
def instance_norm(func: Callable[..., torch.Tensor], input: TiledTensor,
                  running_mean: torch.Tensor | None = None, running_var: torch.Tensor | None = None,
                  weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  use_input_stats: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5) -> TiledTensor:
    """Instance norm over the whole volume; with tracked statistics in eval mode, block by block."""
    if not use_input_stats:
        return blockwise(lambda blk: func(blk, running_mean, running_var, weight, bias, False,
                                          momentum, eps), input, name="instance_norm")
    if running_mean is not None:
        raise UnpartitionableLayerError(
            "InstanceNorm(track_running_stats=True) in training", reason="not supported")
    return normalize(input, "instance", weight, bias, eps)[0]


@handles(F.group_norm)
def group_norm(func: Callable[..., torch.Tensor], input: TiledTensor, num_groups: int,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> TiledTensor:
    """Group norm over the whole volume."""
    return normalize(input, "group", weight, bias, eps, groups=num_groups)[0]


@handles(F.batch_norm)
def batch_norm(func: Callable[..., torch.Tensor], input: TiledTensor,
               running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
               training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> TiledTensor:
    """Batch norm: local in eval mode; in training, batch statistics over every block and rank."""
    if not training:
        return blockwise(lambda blk: func(blk, running_mean, running_var, weight, bias, False,
                                          momentum, eps), input, name="batch_norm")
    out, mean, var = normalize(input, "batch", weight, bias, eps)
    if running_mean is not None and running_var is not None:
        n = input.store.batch * math.prod(input.layout.shape)
        with torch.no_grad():
            running_mean.mul_(1 - momentum).add_(momentum * mean[0].to(running_mean.dtype))
            unbiased = var[0] * n / max(1, n - 1)
            running_var.mul_(1 - momentum).add_(momentum * unbiased.to(running_var.dtype))
    return out


def blockwise(fn: Callable[..., torch.Tensor], *args: Any, name: str = "pointwise") -> TiledTensor:
    """Apply ``fn`` block by block; partitioned arguments become their blocks, others pass as is.

    Plain tensors must broadcast without spatial extent (per-channel weights, scalars).
    """
    tiled = tiled_args(args)
    first = tiled[0]
    for t in tiled[1:]:
        if t.layout != first.layout:
            raise UnpartitionableLayerError(name, reason="operands are cut differently")
    for a in args:
        if isinstance(a, torch.Tensor) and not isinstance(a, TiledTensor) and a.dim() > 2 \
                and any(s != 1 for s in a.shape[2:]):
            raise UnpartitionableLayerError(name, reason="a plain tensor with spatial extent")
    ctx = first.ctx
    out = None
    for idx in ctx.blocks(first.layout):
        def sub(a: Any) -> Any:
            if isinstance(a, TiledTensor):
                return a.block(idx)
            if isinstance(a, (list, tuple)):
                return type(a)(sub(v) for v in a)
            return a

        y = fn(*(sub(a) for a in args))
        if out is None:
            out = ctx.empty(first.layout, y.shape[0], y.shape[1], y.dtype)
        out.write(idx, y)
    if out is None:  # this rank holds no block of the layout
        out = ctx.empty(first.layout, first.store.batch, first.store.channels, first.store.dtype)
    return TiledTensor(out, ctx)


def _elementwise(func: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> TiledTensor:
    return blockwise(lambda *a: func(*a, **kwargs), *args, name=getattr(func, "__name__", "op"))


_T = torch.Tensor
for _f in (torch.add, torch.sub, torch.mul, torch.div, _T.add, _T.sub, _T.mul, _T.div,
           _T.__add__, _T.__radd__, _T.__sub__, _T.__rsub__, _T.__mul__, _T.__rmul__,
           _T.__truediv__, _T.__neg__, torch.sigmoid, torch.tanh, _T.sigmoid, _T.tanh,
           torch.relu, _T.relu, _T.contiguous, _T.clone, torch.clone, torch.prelu, F.prelu,
           F.gelu, F.silu, F.mish, F.hardswish, F.softplus):
    handles(_f)(_elementwise)

_INPLACE = {_T.add_: torch.add, _T.sub_: torch.sub, _T.mul_: torch.mul, _T.div_: torch.div,
            _T.__iadd__: torch.add, _T.__isub__: torch.sub, _T.__imul__: torch.mul,
            _T.__itruediv__: torch.div, _T.relu_: torch.relu, _T.sigmoid_: torch.sigmoid}


def _inplace(func: Callable[..., Any], self: TiledTensor, *args: Any, **kwargs: Any) -> TiledTensor:
    """An in-place update: computed out of place, then the wrapper takes the new blocks."""
    res = _elementwise(_INPLACE[func], self, *args, **kwargs)
    self.store = res.store
    return self


for _f in _INPLACE:
    handles(_f)(_inplace)


@handles(F.relu)
def _relu(func: Callable[..., Any], input: TiledTensor, inplace: bool = False) -> TiledTensor:
    return blockwise(F.relu, input, name="relu")


@handles(F.leaky_relu)
def _leaky_relu(func: Callable[..., Any], input: TiledTensor, negative_slope: float = 0.01,
                inplace: bool = False) -> TiledTensor:
    return blockwise(lambda b: F.leaky_relu(b, negative_slope), input, name="leaky_relu")


@handles(F.elu)
def _elu(func: Callable[..., Any], input: TiledTensor, alpha: float = 1.0,
         inplace: bool = False) -> TiledTensor:
    return blockwise(lambda b: F.elu(b, alpha), input, name="elu")


@handles(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout)
def _dropout(func: Callable[..., Any], input: TiledTensor, p: float = 0.5, training: bool = True,
             inplace: bool = False) -> TiledTensor:
    if training and p > 0:
        raise UnpartitionableLayerError(
            "Dropout(p>0) in training", reason="random masks would differ from the whole volume")
    return input


@handles(F.softmax, torch.softmax, _T.softmax, F.log_softmax, torch.log_softmax)
def _softmax(func: Callable[..., Any], input: TiledTensor, dim: int | None = None,
             *args: Any, **kwargs: Any) -> TiledTensor:
    if dim not in (1, -input.dim() + 1):
        raise UnpartitionableLayerError("softmax over a spatial axis", reason="not supported")
    return blockwise(lambda b: func(b, 1), input, name="softmax")


@handles(torch.cat, torch.concat, torch.concatenate)
def _cat(func: Callable[..., Any], tensors: Sequence[Any], dim: int = 0, **kwargs: Any) -> TiledTensor:
    nd = tensors[0].dim()
    if dim % nd != 1:
        raise UnpartitionableLayerError("cat", reason=f"only along channels (dim 1), not dim {dim}")
    return blockwise(lambda *blocks: torch.cat(blocks, 1), *tensors, name="cat")


@handles(F.pad)
def _pad(func: Callable[..., Any], input: TiledTensor, pad: Sequence[int], mode: str = "constant",
         value: float | None = None) -> TiledTensor:
    if any(pad):
        raise UnpartitionableLayerError(
            "pad", reason="explicit padding inside the network (make sides divisible by the stride)")
    return input
