"""Plain-torch mirrors of MONAI's ``UNet`` and ``DenseNet`` for inference (no ``import monai``).

Why mirror: ``import monai.networks.nets`` costs 3-4 s on the 2-core machine (it pulls
``monai.transforms``, ``monai.data``, ``scipy.signal``, ``scipy.stats``, pandas, matplotlib ...),
more than everything else ``sirad grade`` does on a CT together; ``import torch`` alone costs about
1.3 s. The grade path therefore builds these mirrors, which

* have exactly the modules, module names and parameter/buffer keys of
  ``monai.networks.nets.UNet`` / ``DenseNet`` (MONAI 1.x), so a bundle's safetensors state dict
  written from a MONAI network loads into them with ``strict=True`` and vice versa;
* run the same torch operations in the same order, so their outputs equal MONAI's
  (``tests/ai/test_nets.py`` checks several configurations against MONAI itself, and the shipped
  bundles);
* accept every keyword those MONAI classes accept for a single-channel 3D input; a layer spec they
  do not know (an activation or normalisation outside :data:`ACTS` / :data:`NORMS`, a callable)
  makes :func:`mirror_network` return ``None`` and the caller falls back to MONAI itself.

Training keeps MONAI (``bundle.build_network`` with ``backend="monai"``, the default).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

#: MONAI ``Act`` factory names -> torch classes (MONAI registers exactly these classes).
ACTS: dict[str, type[nn.Module]] = {
    "ELU": nn.ELU, "RELU": nn.ReLU, "LEAKYRELU": nn.LeakyReLU, "PRELU": nn.PReLU, "RELU6": nn.ReLU6,
    "SELU": nn.SELU, "CELU": nn.CELU, "GELU": nn.GELU, "SIGMOID": nn.Sigmoid, "TANH": nn.Tanh,
    "SOFTMAX": nn.Softmax, "LOGSOFTMAX": nn.LogSoftmax,
}
#: MONAI ``Norm`` factory names -> torch classes for 3D data (``num_features`` / ``num_channels`` filled in).
NORMS: dict[str, type[nn.Module]] = {
    "INSTANCE": nn.InstanceNorm3d, "BATCH": nn.BatchNorm3d, "GROUP": nn.GroupNorm,
}


class UnsupportedLayer(ValueError):
    """A layer spec the mirror does not reproduce (the caller falls back to MONAI)."""


def _split(spec: Any) -> tuple[str, dict[str, Any]]:
    """MONAI's ``split_args``: ``"name"`` or ``(name, {kwargs})`` (a JSON list counts as a pair)."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], dict):
        return spec[0], dict(spec[1])
    raise UnsupportedLayer(f"layer spec {spec!r}")


def _act(spec: Any) -> nn.Module:
    if spec == "":
        return nn.Identity()
    name, kw = _split(spec)
    if name.upper() not in ACTS:
        raise UnsupportedLayer(f"activation {name!r}")
    return ACTS[name.upper()](**kw)


def _norm(spec: Any, channels: int) -> nn.Module:
    if spec == "":
        return nn.Identity()
    name, kw = _split(spec)
    if name.upper() not in NORMS:
        raise UnsupportedLayer(f"normalisation {name!r}")
    cls = NORMS[name.upper()]
    key = "num_channels" if cls is nn.GroupNorm else "num_features"
    kw.setdefault(key, channels)
    return cls(**kw)


def _dropout(spec: Any, dim: int) -> nn.Module:
    if spec == "":
        return nn.Identity()
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        name, kw = "dropout", {"p": float(spec)}
    else:
        name, kw = _split(spec)
    if name.upper() != "DROPOUT":
        raise UnsupportedLayer(f"dropout {name!r}")
    return (nn.Dropout if dim == 1 else nn.Dropout3d)(**kw)


def _same_padding(kernel_size: int | Sequence[int]) -> int | tuple[int, ...]:
    ks = [kernel_size] if isinstance(kernel_size, int) else list(kernel_size)
    if any((k - 1) % 2 for k in ks):
        raise UnsupportedLayer(f"same padding for kernel size {kernel_size}")
    pad = tuple((k - 1) // 2 for k in ks)
    return pad if len(pad) > 1 else pad[0]


def _stride_minus_one(strides: int | Sequence[int]) -> int | tuple[int, ...]:
    s = [strides] if isinstance(strides, int) else list(strides)
    out = tuple(int(v) - 1 for v in s)
    return out if len(out) > 1 else out[0]


def _prod(v: int | Sequence[int]) -> int:
    out = 1
    for x in ([v] if isinstance(v, int) else v):
        out *= int(x)
    return out


# --- UNet (monai.networks.nets.UNet, spatial_dims=3) -------------------------------------------------


class ADN(nn.Sequential):
    """``monai.networks.blocks.ADN``: norm ``N``, dropout ``D``, activation ``A`` in the given order."""

    def __init__(self, ordering: str, channels: int, act: Any, norm: Any, dropout: Any, dropout_dim: int) -> None:
        super().__init__()
        ops = {"N": None if norm is None else _norm(norm, channels),
               "A": None if act is None else _act(act),
               "D": None if dropout is None else _dropout(dropout, dropout_dim)}
        for item in ordering.upper():
            if item not in ops:
                raise UnsupportedLayer(f"ADN ordering {ordering!r}")
            if ops[item] is not None:
                self.add_module(item, ops[item])


class Convolution(nn.Sequential):
    """``monai.networks.blocks.Convolution``: (transposed) conv, then ``adn``."""

    def __init__(self, cin: int, cout: int, *, strides: Any = 1, kernel_size: Any = 3, adn_ordering: str = "NDA",
                 act: Any = "PRELU", norm: Any = "INSTANCE", dropout: Any = None, dropout_dim: int = 1,
                 bias: bool = True, conv_only: bool = False, is_transposed: bool = False) -> None:
        super().__init__()
        padding = _same_padding(kernel_size)
        if is_transposed:
            conv: nn.Module = nn.ConvTranspose3d(cin, cout, kernel_size=kernel_size, stride=strides, padding=padding,
                                                 output_padding=_stride_minus_one(strides), bias=bias)
        else:
            conv = nn.Conv3d(cin, cout, kernel_size=kernel_size, stride=strides, padding=padding, bias=bias)
        self.add_module("conv", conv)
        if conv_only or (act is None and norm is None and dropout is None):
            return
        self.add_module("adn", ADN(adn_ordering, cout, act, norm, dropout, dropout_dim))


class ResidualUnit(nn.Module):
    """``monai.networks.blocks.ResidualUnit``: ``subunits`` convolutions plus a (projected) residual."""

    def __init__(self, cin: int, cout: int, *, strides: Any = 1, kernel_size: Any = 3, subunits: int = 2,
                 last_conv_only: bool = False, **conv_kw: Any) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        self.residual: nn.Module = nn.Identity()
        padding = _same_padding(kernel_size)
        ch, st = cin, strides
        n = max(1, subunits)
        for su in range(n):
            self.conv.add_module(f"unit{su:d}", Convolution(ch, cout, strides=st, kernel_size=kernel_size,
                                                            conv_only=last_conv_only and su == n - 1, **conv_kw))
            ch, st = cout, 1
        if _prod(strides) != 1 or cin != cout:
            rk, rp = (kernel_size, padding) if _prod(strides) != 1 else (1, 0)
            self.residual = nn.Conv3d(cin, cout, rk, strides, rp, bias=conv_kw.get("bias", True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.residual(x)
        return self.conv(x) + res


class SkipConnection(nn.Module):
    """``monai.networks.layers.SkipConnection`` (mode ``cat`` along channels)."""

    def __init__(self, submodule: nn.Module) -> None:
        super().__init__()
        self.submodule = submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.submodule(x)], dim=1)


class UNet(nn.Module):
    """``monai.networks.nets.UNet`` with ``spatial_dims=3`` (same arguments, same ``model`` tree)."""

    def __init__(self, in_channels: int, out_channels: int, channels: Sequence[int], strides: Sequence[int],
                 kernel_size: Any = 3, up_kernel_size: Any = 3, num_res_units: int = 0, act: Any = "PRELU",
                 norm: Any = "INSTANCE", dropout: Any = 0.0, bias: bool = True, adn_ordering: str = "NDA") -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError("the length of `channels` should be no less than 2.")
        if len(strides) < len(channels) - 1:
            raise ValueError("the length of `strides` should equal to `len(channels) - 1`.")
        for k in (kernel_size, up_kernel_size):
            if not isinstance(k, int) and len(k) != 3:
                raise ValueError("the length of `kernel_size` should equal to `dimensions`.")
        kw = {"act": act, "norm": norm, "dropout": dropout, "bias": bias, "adn_ordering": adn_ordering}

        def down(cin: int, cout: int, s: Any) -> nn.Module:
            if num_res_units > 0:
                return ResidualUnit(cin, cout, strides=s, kernel_size=kernel_size, subunits=num_res_units, **kw)
            return Convolution(cin, cout, strides=s, kernel_size=kernel_size, **kw)

        def up(cin: int, cout: int, s: Any, is_top: bool) -> nn.Module:
            conv = Convolution(cin, cout, strides=s, kernel_size=up_kernel_size, conv_only=is_top and num_res_units == 0,
                               is_transposed=True, **kw)
            if num_res_units > 0:
                ru = ResidualUnit(cout, cout, strides=1, kernel_size=kernel_size, subunits=1, last_conv_only=is_top, **kw)
                return nn.Sequential(conv, ru)
            return conv

        def block(cin: int, cout: int, chans: Sequence[int], strs: Sequence[int], is_top: bool) -> nn.Module:
            c, s = chans[0], strs[0]
            if len(chans) > 2:
                sub, upc = block(c, c, chans[1:], strs[1:], False), c * 2
            else:
                sub, upc = down(c, chans[1], 1), c + chans[1]
            return nn.Sequential(down(cin, c, s), SkipConnection(sub), up(upc, cout, s, is_top))

        self.model = block(in_channels, out_channels, list(channels), list(strides), True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# --- DenseNet (monai.networks.nets.DenseNet, spatial_dims=3) ------------------------------------------


class _DenseLayer(nn.Module):
    def __init__(self, cin: int, growth_rate: int, bn_size: int, dropout_prob: float, act: Any, norm: Any) -> None:
        super().__init__()
        mid = bn_size * growth_rate
        self.layers = nn.Sequential()
        self.layers.add_module("norm1", _norm(norm, cin))
        self.layers.add_module("relu1", _act(act))
        self.layers.add_module("conv1", nn.Conv3d(cin, mid, kernel_size=1, bias=False))
        self.layers.add_module("norm2", _norm(norm, mid))
        self.layers.add_module("relu2", _act(act))
        self.layers.add_module("conv2", nn.Conv3d(mid, growth_rate, kernel_size=3, padding=1, bias=False))
        if dropout_prob > 0:
            self.layers.add_module("dropout", nn.Dropout3d(dropout_prob))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.layers(x)], 1)


class DenseNet(nn.Module):
    """``monai.networks.nets.DenseNet`` with ``spatial_dims=3``: ``features`` then ``class_layers``
    (relu, global average pool, flatten, linear ``out``)."""

    def __init__(self, in_channels: int, out_channels: int, init_features: int = 64, growth_rate: int = 32,
                 block_config: Sequence[int] = (6, 12, 24, 16), bn_size: int = 4,
                 act: Any = ("relu", {"inplace": True}), norm: Any = "batch", dropout_prob: float = 0.0) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv3d(in_channels, init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", _norm(norm, init_features)),
            ("relu0", _act(act)),
            ("pool0", nn.MaxPool3d(kernel_size=3, stride=2, padding=1)),
        ]))
        ch = init_features
        for i, n in enumerate(block_config):
            blk = nn.Sequential()
            for j in range(n):
                blk.add_module(f"denselayer{j + 1}", _DenseLayer(ch + j * growth_rate, growth_rate, bn_size,
                                                                 dropout_prob, act, norm))
            self.features.add_module(f"denseblock{i + 1}", blk)
            ch += n * growth_rate
            if i == len(block_config) - 1:
                self.features.add_module("norm5", _norm(norm, ch))
            else:
                trans = nn.Sequential(OrderedDict([
                    ("norm", _norm(norm, ch)), ("relu", _act(act)),
                    ("conv", nn.Conv3d(ch, ch // 2, kernel_size=1, bias=False)),
                    ("pool", nn.AvgPool3d(kernel_size=2, stride=2)),
                ]))
                self.features.add_module(f"transition{i + 1}", trans)
                ch //= 2
        self.class_layers = nn.Sequential(OrderedDict([
            ("relu", _act(act)), ("pool", nn.AdaptiveAvgPool3d(1)), ("flatten", nn.Flatten(1)),
            ("out", nn.Linear(ch, out_channels)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.class_layers(self.features(x))


def mirror_network(kind: str, config: dict[str, Any], *, n_classes: int) -> nn.Module | None:
    """The mirror of MONAI's ``UNet`` (``kind="unet"``) or ``DenseNet`` for a 1-channel 3D input.

    ``config`` holds the keyword arguments MONAI's class takes (``spatial_dims``, ``in_channels``
    and ``out_channels`` excluded). Returns ``None`` when a layer spec in it is outside what the
    mirror reproduces; the caller then builds MONAI's own class. Other errors (an unknown keyword,
    a bad value) propagate as MONAI's would.
    """
    try:
        if kind == "unet":
            return UNet(1, n_classes, **config)
        if kind == "densenet":
            return DenseNet(1, n_classes, **config)
    except UnsupportedLayer:
        return None
    raise ValueError(f"no mirror for architecture type {kind!r}")
