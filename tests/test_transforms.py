"""Per-example transforms: shapes, seeded randomness, normalization and the RNN row view."""
import numpy as np

from jaxdist.data import transforms
from jaxdist.data.pipeline import example_rng
from tests.helpers import tiny_config


def _image(h=32, w=32, c=3):
    return np.random.default_rng(0).integers(0, 256, (h, w, c), dtype=np.uint8)


def _shift_of(image, out, padding):
    """The (dy, dx) by which `out` is `image` moved, zeros shifted in; every match, to catch ambiguity."""
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    return [(dy, dx) for dy in range(-padding, padding + 1) for dx in range(-padding, padding + 1)
            if np.array_equal(padded[padding + dy:padding + dy + h, padding + dx:padding + dx + w], out)]


def test_pad_crop_is_a_shifted_window_covering_every_shift():
    """Each output is the image moved by one shift within the padding, zeros shifted in, and over 2,000 draws
    every one of the 81 shifts occurs (a crop that never shifts, or only one way, fails)."""
    image = _image() + 1  # no zero pixels: a zero in the output can only be padding
    seen = []
    for p in range(2000):
        [shift] = _shift_of(image, transforms.pad_crop(image, 4, example_rng(5, p)), 4)
        seen.append(shift)
    assert set(seen) == {(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)}
    assert max(seen.count(s) for s in set(seen)) < 3 * 2000 / 81  # roughly uniform


def test_inception_crop_draws_the_whole_range_of_areas_and_places():
    """On an image whose pixels hold their own coordinates, the output's range of coordinates is the crop:
    over 300 draws it must take small crops (under 45% of the width) and large ones (over 80%: at most 4:3
    of the 40 rows fit, 53 of 60 columns, less the resize's edge blur), at many places. A crop that only resizes the whole image, or always takes the centre, fails."""
    h, w = 40, 60
    rows, cols = np.meshgrid(np.arange(h) / (h - 1), np.arange(w) / (w - 1), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.float32)
    widths, lefts = [], []
    for p in range(300):
        out = transforms.inception_crop(image, 24, example_rng(2, p))
        assert out.shape == (24, 24, 3)
        widths.append(out[..., 1].max() - out[..., 1].min())
        lefts.append(round(float(out[..., 1].min()), 2))
    assert min(widths) < 0.45 and max(widths) > 0.8
    assert len(set(lefts)) > 30


def test_flip_happens_about_half_the_time_and_is_seeded():
    image = _image()
    flips = [np.array_equal(transforms.random_flip(image, example_rng(0, p)), image[:, ::-1]) for p in range(200)]
    assert 70 < sum(flips) < 130
    again = [np.array_equal(transforms.random_flip(image, example_rng(0, p)), image[:, ::-1]) for p in range(200)]
    assert flips == again


def test_center_crop_gives_the_requested_size():
    image = _image(40, 60)
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
