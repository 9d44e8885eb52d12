"""The plain-torch mirrors of MONAI's UNet and DenseNet: same state-dict keys, same outputs as MONAI."""
from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from sirad_viewer.ai import bundle as B  # noqa: E402
from sirad_viewer.ai.nets import mirror_network  # noqa: E402

UNETS = [
    {"channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 2},  # the shipped segmenter
    {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 0},
    {"channels": [4, 8], "strides": [2], "num_res_units": 1, "norm": "batch", "act": "relu", "dropout": 0.2},
    {"channels": [4, 8, 8], "strides": [2, 1], "num_res_units": 3, "kernel_size": 5, "up_kernel_size": [3, 3, 3],
     "act": ["leakyrelu", {"negative_slope": 0.1}], "norm": ["group", {"num_groups": 2}], "adn_ordering": "AN",
     "bias": False},
    {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1, "norm": ["instance", {"affine": True}],
     "act": ["prelu", {"init": 0.1}]},
]
DENSENETS = [
    {"init_features": 12, "growth_rate": 8, "block_config": [3, 4], "dropout_prob": 0.1},  # the shipped grader
    {"init_features": 4, "growth_rate": 4, "block_config": [1]},
    {"init_features": 8, "growth_rate": 6, "block_config": [2, 2, 2], "bn_size": 2},
    {"init_features": 6, "growth_rate": 4, "block_config": [2, 3], "act": "elu", "norm": "instance"},
    {"init_features": 4, "growth_rate": 4, "block_config": [2], "act": ["leakyrelu", {"negative_slope": 0.2}],
     "norm": ["group", {"num_groups": 2}]},
]


def _randomise(net: torch.nn.Module, seed: int) -> None:
    """Random weights AND random normalisation statistics, so that every parameter and buffer counts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if t.dtype.is_floating_point:
                v = torch.rand(t.shape, generator=g) + 0.5 if "running_var" in name else \
                    torch.randn(t.shape, generator=g) * 0.3
                t.copy_(v)


def _pair(kind: str, cfg: dict, n_classes: int, seed: int):
    arch = {"type": kind, "config": cfg}
    monai_net = B.build_network(arch, n_classes=n_classes, backend="monai")
    mirror = B.build_network(arch, n_classes=n_classes, backend="mirror")
    assert type(mirror).__module__ == "sirad_viewer.ai.nets"
    _randomise(monai_net, seed)
    assert list(mirror.state_dict()) == list(monai_net.state_dict())
    mirror.load_state_dict(monai_net.state_dict(), strict=True)
    return monai_net.eval(), mirror.eval()


@pytest.mark.parametrize("k,cfg", list(enumerate(UNETS)))
def test_unet_mirror_equals_monai(k, cfg):
    monai_net, mirror = _pair("unet", cfg, 4, k)
    x = torch.randn(2, 1, 16, 24, 16, generator=torch.Generator().manual_seed(10 + k))
    with torch.no_grad():
        a, b = monai_net(x), mirror(x)
    assert a.shape == b.shape == (2, 4, 16, 24, 16)
    assert torch.allclose(a, b, atol=1e-5, rtol=0), float((a - b).abs().max())


@pytest.mark.parametrize("k,cfg", list(enumerate(DENSENETS)))
def test_densenet_mirror_equals_monai(k, cfg):
    monai_net, mirror = _pair("densenet", cfg, 5, 100 + k)
    x = torch.randn(2, 1, 24, 24, 24, generator=torch.Generator().manual_seed(20 + k))
    with torch.no_grad():
        a, b = monai_net(x), mirror(x)
        fa, fb = monai_net.features(x), mirror.features(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=0), float((a - b).abs().max())
    assert torch.allclose(fa, fb, atol=1e-5, rtol=0)


def test_mirror_trains_like_monai():
    """Train mode (batch statistics, dropout off at p=0) and gradients agree too."""
    monai_net, mirror = _pair("densenet", DENSENETS[2], 5, 7)
    x = torch.randn(2, 1, 16, 16, 16)
    monai_net.train(), mirror.train()
    la, lb = monai_net(x).square().sum(), mirror(x).square().sum()
    la.backward(), lb.backward()
    ga = dict(monai_net.named_parameters())
    for name, p in mirror.named_parameters():
        assert torch.allclose(p.grad, ga[name].grad, atol=1e-4, rtol=1e-4), name


def test_unknown_layer_falls_back_to_monai():
    net = B.build_network({"type": "unet", "config": {"channels": [4, 8], "strides": [2], "act": "swish"}},
                          n_classes=5, backend="mirror")
    assert type(net).__module__.startswith("monai.")
    assert mirror_network("unet", {"channels": (4, 8), "strides": (2,), "norm": "layer"}, n_classes=2) is None


def test_a_bad_keyword_is_an_error_as_in_monai():
    with pytest.raises(TypeError):
        B.build_network({"type": "densenet", "config": {"block_config": [1], "no_such_option": 1}}, n_classes=5,
                        backend="mirror")


@pytest.mark.parametrize("task", ["grading", "segmentation"])
def test_shipped_bundles_give_monai_outputs(task):
    from sirad_viewer.ai.pipeline import find_bundle

    bundle = find_bundle(task)
    mirror, monai_net = bundle.build_network(), bundle.build_network(backend="monai")
    assert type(mirror).__module__ == "sirad_viewer.ai.nets" and type(monai_net).__module__.startswith("monai.")
    shape = tuple(bundle.metadata["input"]["size"]) if task == "grading" else (32, 48, 40)
    x = torch.rand((2, 1) + shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = monai_net(x), mirror(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=0), float((a - b).abs().max())


def test_grading_loads_no_monai():
    """The point of the mirror: loading both bundles' networks does not import MONAI."""
    code = ("import sys; from sirad_viewer.ai.pipeline import Grader; g = Grader(device='cpu'); "
            "g.network('grading', 'cpu'); g.network('segmentation', 'cpu'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('monai', 'scipy', 'SimpleITK')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "monai" not in out, out
