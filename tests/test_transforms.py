"""Per-example transforms: shapes, seeded randomness, normalization and the RNN row view."""
import numpy as np

from jaxdist.data import transforms
from jaxdist.data.pipeline import example_rng
from tests.helpers import tiny_config


def _image(h=32, w=32, c=3):
    return np.random.default_rng(0).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_pad_crop_is_a_shifted_window_with_zero_fill():
    image = _image()
    out = transforms.pad_crop(image, 4, np.random.default_rng(3))
    assert out.shape == image.shape
    shifts = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
              if np.array_equal(np.roll(np.pad(image, ((4, 4), (4, 4), (0, 0))), (dy, dx), (0, 1))[4:36, 4:36], out)]
    assert shifts  # out is the image moved by at most 4 pixels, zeros shifted in


def test_flip_happens_about_half_the_time_and_is_seeded():
    image = _image()
    flips = [np.array_equal(transforms.random_flip(image, example_rng(0, p)), image[:, ::-1]) for p in range(200)]
    assert 70 < sum(flips) < 130
    again = [np.array_equal(transforms.random_flip(image, example_rng(0, p)), image[:, ::-1]) for p in range(200)]
    assert flips == again


def test_inception_and_center_crops_give_the_requested_size():
    image = _image(40, 60)
    for p in range(20):
        assert transforms.inception_crop(image, 24, example_rng(1, p)).shape == (24, 24, 3)
    center = transforms.center_crop(image, 24)
    assert center.shape == (24, 24, 3) and center.dtype == np.uint8


def test_resize_keeps_dtype_for_uint8_and_float():
    assert transforms.resize(_image(8, 8, 1), 16, 16).shape == (16, 16, 1)
    out = transforms.resize(np.ones((8, 8, 2), np.float32) * 0.5, 4, 4)
    assert out.dtype == np.float32 and np.allclose(out, 0.5)


def test_image_transform_normalizes_and_offers_a_row_view():
    config = tiny_config(**{"data.augment": "crop_flip", "data.view": "rows"}).data
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)
    out = transforms.ImageTransform(config, mean, std, train=True)(_image(), example_rng(0, 0))
    assert out.shape == (32, 96) and out.dtype == np.float32
    plain = transforms.ImageTransform(tiny_config().data, mean, std, train=False)(_image(), None)
    np.testing.assert_allclose(plain, (_image() / 255.0 - mean) / std, atol=1e-6)
