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


class _LinearHead(torch.nn.Module):
    """Only a CAM head (relu -> global average pool -> flatten -> linear) with weight 1 for every grade:
    its class activation map is the feature map itself."""

    def __init__(self):
        super().__init__()
        from collections import OrderedDict

        self.class_layers = torch.nn.Sequential(OrderedDict([
            ("relu", torch.nn.ReLU()), ("pool", torch.nn.AdaptiveAvgPool3d(1)), ("flatten", torch.nn.Flatten(1)),
            ("out", torch.nn.Linear(1, 5))]))
        with torch.no_grad():
            self.class_layers.out.weight.fill_(1.0)


def _spec(turns: int, jitter: tuple[float, float]):
    import numpy as np

    return GR.CropSpec(spacing_mm=np.array([1.5, 1.5, 1.5]), size=np.array([48, 48, 48]), window_hu=(-200.0, 1500.0),
                       mirror_left=True, turns=turns, jitter=jitter)


@pytest.mark.parametrize("turns,jitter", [(1, (2.0, 5.0)), (4, (3.0, 8.0)), (4, (0.0, 0.0))])
def test_frame_averaged_cams_move_every_frame_back_into_the_crop(turns, jitter):
    # a field with one off-centre peak, read as the grade pass reads a crop: at each quarter turn and
    # test-time frame; its maps (on a 24^3 grid, half the crop's resolution) averaged without moving
    # them back would smear the peak around the crop's centre
    import numpy as np

    spec = _spec(turns, jitter)
    idx = np.indices((48, 48, 48)).astype(np.float32)
    peak = np.array([31.0, 17.0, 27.0])
    field = np.exp(-((idx - peak[:, None, None, None]) ** 2).sum(0) / (2 * 4.0 ** 2)).astype(np.float32)
    x = GR.frame_jitter(GR.quarter_turns(field[None, None], spec.turns), spec)  # (F, 1, 48, 48, 48)
    acts = torch.from_numpy(x).reshape(len(x), 1, 24, 2, 24, 2, 24, 2).mean(dim=(3, 5, 7))
    net = _LinearHead()
    cams = GR.frame_averaged_cams(net, acts, [2], spec)
    assert cams.shape == (1, 48, 48, 48)
    truth = GR.frame_averaged_cams(net, acts[:1], [2], _spec(1, (0.0, 0.0)))[0]  # the crop as it is, one frame
    assert np.corrcoef(cams[0].ravel(), truth.ravel())[0, 1] > 0.99
    assert np.abs(np.array(np.unravel_index(np.argmax(cams[0]), cams[0].shape)) - peak).max() <= 1.5
    if turns > 1:  # the quarter turns not undone: the peak is spread over four places
        naive = acts.mean(0, keepdim=True)
        same = GR.frame_averaged_cams(net, naive, [2], _spec(1, (0.0, 0.0)))[0]
        assert np.corrcoef(same.ravel(), truth.ravel())[0, 1] < 0.7  # measured 0.51: one place in four


def test_one_frame_cam_from_maps_equals_the_forward_only_cam():
    import numpy as np

    from sirad_viewer.ai.ood import forward_with_features

    net = _net(CONFIGS[1], "mirror", 7)
    x = torch.rand(2, 1, 48, 48, 48, generator=torch.Generator().manual_seed(7))
    cams, _ = GR.class_activation_maps(net, x, [1, 3])
    with torch.no_grad():
        _, _, acts = forward_with_features(net, x, maps=True)
    assert np.abs(GR.frame_averaged_cams(net, acts, [1, 3], _spec(1, (0.0, 0.0))) - cams).max() < 1e-5
    with pytest.raises(ValueError, match="expected 2 x 1 quarter turns x 13 frames"):
        GR.frame_averaged_cams(net, acts, [1, 3], _spec(1, (2.0, 5.0)))
