"""Heatmaps: the forward-only CAM equals MONAI's GradCAM at ``class_layers.relu`` (tiny random nets)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from sirad_viewer.ai import grading as GR  # noqa: E402
from sirad_viewer.ai.bundle import build_network  # noqa: E402

CONFIGS = [{"init_features": 4, "growth_rate": 4, "block_config": [2, 2]},
           {"init_features": 12, "growth_rate": 8, "block_config": [3, 4], "dropout_prob": 0.1},
           {"init_features": 6, "growth_rate": 4, "block_config": [1, 1, 1], "norm": "instance"}]


def _net(cfg: dict, backend: str, seed: int):
    torch.manual_seed(seed)
    net = build_network({"type": "densenet", "config": cfg}, n_classes=5, backend=backend).eval()
    with torch.no_grad():  # a non-zero bias and spread weights, so that every grade's map differs
        net.class_layers.out.weight.normal_(0, 1.0)
        net.class_layers.out.bias.normal_(0, 1.0)
    return net


def _monai_gradcam(net, x, target: int):
    from monai.visualize import GradCAM

    cam = GradCAM(nn_module=net, target_layers="class_layers.relu", postprocessing=lambda m: m)
    m = cam(x, class_idx=target)[0, 0].detach().numpy()
    return m / m.max() if m.max() > 0 else m


@pytest.mark.parametrize("k,cfg", list(enumerate(CONFIGS)))
@pytest.mark.parametrize("backend", ["monai", "mirror"])
def test_forward_only_cam_equals_monai_gradcam(k, cfg, backend):
    net = _net(cfg, backend, k)
    reference = _net(cfg, "monai", k)  # MONAI's GradCAM on MONAI's own class, same weights
    reference.load_state_dict(net.state_dict())
    x = torch.rand(2, 1, 24, 32, 24, generator=torch.Generator().manual_seed(k))
    targets = [1, 3]
    nonzero = 0
    cams, logits = GR.class_activation_maps(net, x, targets)
    assert cams.shape == (2, 24, 32, 24)
    with torch.no_grad():
        assert abs(logits - reference(x).numpy()).max() < 1e-5
    for i, t in enumerate(targets):
        ref = _monai_gradcam(reference, x[i:i + 1], t)
        nonzero += ref.max() > 0
        assert abs(cams[i] - ref).max() < 1e-5, abs(cams[i] - ref).max()
    assert nonzero  # the comparison is not between two empty maps
    assert abs(cams[0] - GR.gradcam(net, x[:1], 1)[0]).max() < 1e-5  # the single-joint wrapper is the same map


def test_other_heads_use_the_backward_pass_and_still_equal_monai():
    net = _net(CONFIGS[0], "mirror", 5)
    net.class_layers.pool = torch.nn.AdaptiveMaxPool3d(1)  # not global average pooling: no forward-only CAM
    assert GR._cam_head(net) is None
    reference = _net(CONFIGS[0], "monai", 5)
    reference.load_state_dict(net.state_dict())
    reference.class_layers.pool = torch.nn.AdaptiveMaxPool3d(1)
    x = torch.rand(1, 1, 24, 24, 24, generator=torch.Generator().manual_seed(9))
    cam, _ = GR.gradcam(net, x, 2)
    ref = _monai_gradcam(reference, x, 2)
    assert abs(cam - ref).max() < 1e-5
