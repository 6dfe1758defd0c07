"""PreprocessConfig validation and round trip; numpy eval preprocessing equals torchvision's, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fgcli.data.preprocess import IMAGENET_MEAN, PreprocessConfig, preprocess_eval, resized_size
from fgcli.errors import FgcliError


def test_config_round_trips_through_a_json_dict():
    cfg = PreprocessConfig(img_size=32, resize_size=40, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    values = cfg.to_dict()
    assert values == {"img_size": 32, "resize_size": 40, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    assert PreprocessConfig.from_dict(values) == cfg
    assert PreprocessConfig().mean == IMAGENET_MEAN and PreprocessConfig().img_size == 448


@pytest.mark.parametrize("kwargs,message", [
    ({"img_size": 64, "resize_size": 48}, "crop size 64 must be positive and at most the resize size 48"),
    ({"img_size": 0, "resize_size": 48}, "crop size 0 must be positive"),
    ({"img_size": 32, "resize_size": 36, "std": (0.2, 0.0, 0.2)}, "std > 0"),
    ({"img_size": 32, "resize_size": 36, "mean": (0.5, 0.5)}, "need 3 values each"),
])
def test_config_rejects_settings_that_cannot_match_torchvision(kwargs, message):
    with pytest.raises(FgcliError, match=message):
        PreprocessConfig(**kwargs)


def test_from_dict_names_missing_keys():
    with pytest.raises(FgcliError, match=r"preprocessing settings lack resize_size, std"):
        PreprocessConfig.from_dict({"img_size": 32, "mean": [0.5, 0.5, 0.5]})


def test_resized_size_matches_torchvision_rule():
    functional = pytest.importorskip("torchvision.transforms.functional")
    for width, height in [(500, 375), (375, 500), (41, 77), (77, 41), (100, 100), (33, 120), (1023, 1000)]:
        resized = functional.resize(Image.new("RGB", (width, height)), 37)
        assert resized_size(width, height, 37) == resized.size, (width, height)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_numpy_eval_matches_torchvision_on_odd_sizes(mode):
    pytest.importorskip("torch")
    from fgcli.data.transforms import eval_transform

    cfg = PreprocessConfig(img_size=33, resize_size=39, mean=(0.45, 0.5, 0.55), std=(0.2, 0.3, 0.25))
    transform = eval_transform(cfg)
    rng = np.random.default_rng(1)
    for width, height in [(39, 39), (40, 39), (39, 90), (95, 41), (61, 47), (47, 61), (200, 40)]:
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        img = Image.fromarray(pixels).convert(mode)
        expected = transform(img.convert("RGB")).numpy()
        got = preprocess_eval(img, cfg)
        assert got.shape == (3, 33, 33) and got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"{width}x{height} {mode}")


def test_eval_preprocessing_normalises_a_flat_colour():
    cfg = PreprocessConfig(img_size=4, resize_size=6, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.125))
    out = preprocess_eval(Image.new("RGB", (9, 7), (255, 0, 51)), cfg)
    expected = [(1.0 - 0.5) / 0.5, (0.0 - 0.5) / 0.25, (0.2 - 0.5) / 0.125]
    np.testing.assert_allclose(out.reshape(3, -1).mean(axis=1), expected, atol=1e-6)
    np.testing.assert_allclose(out.reshape(3, -1).std(axis=1), 0.0, atol=1e-6)
