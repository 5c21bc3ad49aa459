from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from explainer.image import (
    ImageError,
    Preprocessing,
    normalize_maps,
    prepare_image,
    preprocess,
    upsample_bilinear,
)


def _photo(w: int = 320, h: int = 240) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_resize_shorter_side_then_center_crop():
    img = prepare_image(_photo(320, 240), Preprocessing(resize=256, crop=224))
    assert img.size == (224, 224)
    assert prepare_image(_photo(320, 240), Preprocessing(resize=256, crop=None)).size == (341, 256)


def test_preprocess_matches_manual_normalization():
    pre = Preprocessing(resize=(8, 8), crop=None)
    img = _photo(8, 8)
    x = preprocess(img, pre)
    manual = (np.asarray(img, np.float32) / 255 - np.array(pre.mean)) / np.array(pre.std)
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], manual.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)
    nhwc = preprocess([img, img], Preprocessing(resize=(8, 8), crop=None, layout="NHWC"))
    assert nhwc.shape == (2, 8, 8, 3)


def test_preprocessing_round_trips_through_dict():
    pre = Preprocessing(resize=(224, 224), crop=None, scale=1.0, mean=(127.0,) * 3,
                        std=(128.0,) * 3)
    assert Preprocessing.from_dict(pre.to_dict()) == pre


def test_image_errors(tmp_path):
    with pytest.raises(ImageError, match="no such image"):
        preprocess(tmp_path / "missing.png", Preprocessing())
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.png"):
        preprocess(bad, Preprocessing())
    with pytest.raises(ImageError, match="larger"):
        preprocess(_photo(100, 100), Preprocessing(resize=None, crop=224))
    with pytest.raises(ImageError, match="layout"):
        Preprocessing(layout="CHW")


def test_upsample_bilinear_matches_half_pixel_reference():
    maps = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    up = upsample_bilinear(maps, (6, 8))
    # half-pixel centers: output pixel (0, 1) samples source (-0.25 -> 0, 0.25)
    assert up.shape == (1, 6, 8)
    assert up[0, 0, 0] == pytest.approx(0.0)
    assert up[0, 0, 1] == pytest.approx(0.25)
    assert up[0, 1, 0] == pytest.approx(1.0)  # row 1 samples source row 0.25 -> 0.25 * 4
    np.testing.assert_allclose(upsample_bilinear(maps, (3, 4)), maps, atol=1e-6)


def test_normalize_maps_on_strided_input_leaves_it_alone():
    maps = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32).transpose(2, 0, 1)
    before = maps.copy()
    out = normalize_maps(maps)
    np.testing.assert_array_equal(maps, before)
    flat = out.reshape(6, -1)
    np.testing.assert_allclose(flat.min(1), 0, atol=1e-7)
    np.testing.assert_allclose(flat.max(1), 1, atol=1e-6)


def test_normalize_maps_per_map_and_constant_maps():
    maps = np.stack([np.arange(4, dtype=np.float32).reshape(2, 2), np.full((2, 2), 7.0)])
    out = normalize_maps(maps)
    np.testing.assert_allclose(out[0], [[0, 1 / 3], [2 / 3, 1]], rtol=1e-6)
    np.testing.assert_array_equal(out[1], 0)


@pytest.mark.parametrize("size", [(320, 240), (240, 320), (500, 375)])
def test_preprocess_equals_torchvision_transforms(size):
    transforms = pytest.importorskip("torchvision.transforms")
    img = _photo(*size)
    pipeline = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    expected = pipeline(img).numpy()
    np.testing.assert_allclose(preprocess(img, Preprocessing())[0], expected, atol=1e-5)


def test_normalize_maps_in_place():
    maps = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    out = normalize_maps(maps, copy=False)
    assert out is maps or np.shares_memory(out, maps)
    np.testing.assert_allclose(maps[0], [[0, 1 / 3], [2 / 3, 1]], rtol=1e-6)
