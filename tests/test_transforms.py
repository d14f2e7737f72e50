"""Image transforms: shapes, keyed randomness, batch and single paths, normalization and the RNN row view."""
import numpy as np

from jaxdist.data import transforms
from jaxdist.data.pipeline import example_keys
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
    """Each image of a batch is moved by its own shift within the padding, zeros shifted in, and over 2,000
    examples every one of the 81 shifts occurs (a crop that never shifts, only one way, or the same way for
    the whole batch, fails)."""
    image = _image() + 1  # no zero pixels: a zero in the output can only be padding
    out = transforms.pad_crop(np.broadcast_to(image, (2000, *image.shape)), 4, example_keys(5, np.arange(2000)))
    seen = []
    for shifted in out:
        [shift] = _shift_of(image, shifted, 4)
        seen.append(shift)
    assert set(seen) == {(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)}
    assert max(seen.count(s) for s in set(seen)) < 3 * 2000 / 81  # roughly uniform


def test_key_draws_are_uniform_and_the_fields_independent():
    """Over 9,000 keys each of 9 values of a field comes up about 1,000 times, and the pairs of fields 0 and 1
    cover all 81 combinations about evenly (a field read from the wrong bits, or two fields read from the same
    ones, fails)."""
    keys = example_keys(0, np.arange(9000))
    dy, dx = transforms.key_draws(keys, 0, 9), transforms.key_draws(keys, 1, 9)
    for draws in (dy, dx):
        assert draws.min() == 0 and draws.max() == 8
        assert np.all(np.abs(np.bincount(draws, minlength=9) - 1000) < 150)
    pairs = np.bincount(dy * 9 + dx, minlength=81)
    assert pairs.min() > 60 and pairs.max() < 170  # ~111 each
    assert not np.array_equal(dy, transforms.key_draws(keys, 2, 9))


def test_key_draws_scale_each_21_bit_field_to_the_choices():
    """Draw = floor(field * choices / 2^21), field = bits [21 f, 21 f + 21) of the key, checked in Python's exact
    integers on 1,000 keys and on fields just either side of the boundaries between draws (a mask, a shift or
    a scaling off by one bit changes some draws)."""
    edges = [0, 1, 699050, 699051, 1398101, 1398102, 2**20 - 1, 2**20, 2**21 - 1]  # 2^21 / 3 = 699050.7
    crafted = np.asarray([v << (21 * f) for v in edges for f in (0, 1, 2)], np.uint64)
    keys = np.concatenate([example_keys(11, np.arange(1000)), crafted])
    for field in (0, 1, 2):
        for choices in (2, 3, 9):
            want = [((int(k) >> (21 * field)) % 2**21) * choices // 2**21 for k in keys]
            assert transforms.key_draws(keys, field, choices).tolist() == want


def test_crop_flip_draws_its_shift_and_its_flip_independently():
    """Over 3,000 examples every combination of (flip, vertical shift, horizontal shift) occurs: a shift read
    from the flip's bits would tie the two together."""
    image = _image() + 1
    out = _transform("crop_flip", crop_padding=2).batch([image] * 3000, example_keys(9, np.arange(3000)))
    seen = set()
    for o in out:
        o = np.rint(o * 255).astype(np.uint8)
        [(dy, dx)], flipped = (_shift_of(image, o, 2), False) if _shift_of(image, o, 2) else \
            (_shift_of(image[:, ::-1], o, 2), True)
        seen.add((flipped, dy, dx))
    assert len(seen) == 2 * 5 * 5


def test_inception_crop_draws_the_whole_range_of_areas_and_places():
    """On an image whose pixels hold their own coordinates, the output's range of coordinates is the crop:
    over 300 draws it must take small crops (under 45% of the width) and large ones (over 80%: at most 4:3
    of the 40 rows fit, 53 of 60 columns, less the resize's edge blur), at many places. A crop that only resizes the whole image, or always takes the centre, fails."""
    h, w = 40, 60
    rows, cols = np.meshgrid(np.arange(h) / (h - 1), np.arange(w) / (w - 1), indexing="ij")
    image = np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.float32)
    widths, lefts = [], []
    for p in range(300):
        out = transforms.inception_crop(image, 24, np.random.default_rng((2, p)))
        assert out.shape == (24, 24, 3)
        widths.append(out[..., 1].max() - out[..., 1].min())
        lefts.append(round(float(out[..., 1].min()), 2))
    assert min(widths) < 0.45 and max(widths) > 0.8
    assert len(set(lefts)) > 30


def test_flip_happens_about_half_the_time_and_is_seeded():
    image = _image()
    batch = np.broadcast_to(image, (200, *image.shape))
    outs = transforms.random_flip(batch, example_keys(0, np.arange(200)))
    flips = [np.array_equal(o, image[:, ::-1]) for o in outs]
    assert all(f or np.array_equal(o, image) for f, o in zip(flips, outs))
    assert 70 < sum(flips) < 130
    again = [np.array_equal(o, image[:, ::-1]) for o in transforms.random_flip(batch, example_keys(0, np.arange(200)))]
    other = [np.array_equal(o, image[:, ::-1]) for o in transforms.random_flip(batch, example_keys(1, np.arange(200)))]
    assert flips == again and flips != other


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
    out = transforms.ImageTransform(config, mean, std, train=True)(_image(), int(example_keys(0, [0])[0]))
    assert out.shape == (32, 96) and out.dtype == np.float32
    plain = transforms.ImageTransform(tiny_config().data, mean, std, train=False)(_image(), None)
    np.testing.assert_allclose(plain, (_image() / 255.0 - mean) / std, atol=1e-6)


def _coordinates(h, w):
    """Float image whose channels hold each pixel's row and column fractions (and a constant)."""
    rows, cols = np.meshgrid(np.arange(h) / (h - 1), np.arange(w) / (w - 1), indexing="ij")
    return np.stack([rows, cols, np.full_like(rows, 0.5)], -1).astype(np.float32)


def test_validate_accepts_the_augmentations_and_views_and_names_the_valid_ones():
    import pytest

    from jaxdist.errors import ConfigError
    for augment in ("none", "flip", "crop", "crop_flip", "inception_crop"):
        for view in ("image", "rows"):
            transforms.validate(tiny_config(**{"data.augment": augment, "data.view": view}).data)
    with pytest.raises(ConfigError) as e:
        transforms.validate(tiny_config(**{"data.augment": "mixup"}).data)
    assert str(e.value) == "unknown data.augment 'mixup'; valid: none, flip, crop, crop_flip, inception_crop"
    with pytest.raises(ConfigError) as e:
        transforms.validate(tiny_config(**{"data.view": "columns"}).data)
    assert str(e.value) == "unknown data.view 'columns'; valid: image, rows"


def test_to_unit_float_scales_uint8_only():
    out = transforms.to_unit_float(np.array([[[0, 51, 255]]], np.uint8))
    assert out.dtype == np.float32 and np.allclose(out, [[[0.0, 0.2, 1.0]]])
    out = transforms.to_unit_float(np.array([[[0.5, 2.0]]], np.float64))
    assert out.dtype == np.float32 and np.allclose(out, [[[0.5, 2.0]]])


def test_resize_is_bilinear_in_both_paths_and_a_no_op_at_the_same_size():
    image = _image(8, 12, 3)
    assert transforms.resize(image, 8, 12) is image
    small = transforms.resize(image, 4, 6)
    assert small.shape == (4, 6, 3) and small.dtype == np.uint8
    np.testing.assert_allclose(small.astype(float).mean(), image.astype(float).mean(), atol=3)
    grey = transforms.resize(_image(8, 12, 1), 16, 24)
    assert grey.shape == (16, 24, 1) and grey.dtype == np.uint8
    coords = transforms.resize(_coordinates(8, 12), 16, 6)  # rows and columns resized independently
    assert coords.shape == (16, 6, 3) and coords.dtype == np.float32
    assert np.all(np.diff(coords[:, 0, 0]) >= 0) and np.all(np.diff(coords[0, :, 1]) >= 0)
    assert np.allclose(coords[..., 2], 0.5)


def test_center_crop_takes_the_center_of_the_image_resized_to_size_over_fraction():
    image = _coordinates(40, 60)
    out = transforms.center_crop(image, 24)  # shorter side to 24 / 0.875 = 27.4 -> 27 x 41, then the center
    np.testing.assert_array_equal(out, transforms.resize(image, 27, 41)[1:25, 8:32])
    full = transforms.center_crop(image, 20, fraction=1.0)  # shorter side to 20: 20 x 30, then the center
    np.testing.assert_array_equal(full, transforms.resize(image, 20, 30)[:, 5:25])
    tall = transforms.center_crop(_coordinates(60, 40), 24)
    np.testing.assert_array_equal(tall, transforms.resize(_coordinates(60, 40), 41, 27)[8:32, 1:25])


def test_inception_crop_takes_the_whole_image_sometimes_and_non_square_crops():
    """A crop may be the whole image (area 1, aspect 1 fits exactly) and need not be square."""
    image = _coordinates(10, 10)
    whole, aspects = 0, set()
    for p in range(400):
        out = transforms.inception_crop(image, 10, np.random.default_rng((1, p)))
        whole += np.array_equal(out, image)
        aspects.add(round(float((out[..., 0].max() - out[..., 0].min()) / (out[..., 1].max() - out[..., 1].min())), 1))
    assert whole > 0
    assert min(aspects) < 0.95 and max(aspects) > 1.05


def test_inception_crop_falls_back_to_the_center_after_ten_misses():
    """On a 12 x 60 image most drawn crops are too tall; for this example the first ten draws miss (the
    eleventh would fit), so the output is the fallback: the center, as torchvision does."""
    image = _coordinates(12, 60)
    np.testing.assert_array_equal(transforms.inception_crop(image, 8, np.random.default_rng((0, 123))),
                                  transforms.center_crop(image, 8, fraction=1.0))
    hits = sum(not np.array_equal(transforms.inception_crop(image, 8, np.random.default_rng((0, p))),
                                  transforms.center_crop(image, 8, fraction=1.0)) for p in range(100))
    assert hits > 50  # most examples do find a crop


def _transform(augment, train=True, **data):
    config = tiny_config(**{"data.augment": augment, **{f"data.{k}": v for k, v in data.items()}}).data
    return transforms.ImageTransform(config, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), train=train)


def test_each_augmentation_does_what_it_names():
    image = _image() + 1  # no zeros: zeros in the output are padding
    unit = image / np.float32(255.0)
    outs = {a: _transform(a, **{"crop_padding": 3}).batch([image] * 60, example_keys(4, np.arange(60)))
            for a in ("flip", "crop", "crop_flip")}
    flipped = [np.allclose(o, unit[:, ::-1]) for o in outs["flip"]]
    assert all(f or np.allclose(o, unit) for f, o in zip(flipped, outs["flip"])) and 10 < sum(flipped) < 50
    shifts = [_shift_of(image, np.rint(o * 255).astype(np.uint8), 3) for o in outs["crop"]]
    assert all(len(s) == 1 for s in shifts) and len({s[0] for s in shifts}) > 10  # shifted, never flipped
    both = [_shift_of(image, np.rint(o * 255).astype(np.uint8), 3) or
            _shift_of(image[:, ::-1], np.rint(o * 255).astype(np.uint8), 3) for o in outs["crop_flip"]]
    assert all(both) and any(not _shift_of(image, np.rint(o * 255).astype(np.uint8), 3) for o in outs["crop_flip"])
    assert len({s[0] for s in both}) > 10  # crop_flip shifts too, not only flips
    assert _transform("none").random is False and all(_transform(a).random for a in transforms.AUGMENTATIONS[1:])
    assert _transform("crop_flip", train=False).random is False  # the eval split is not augmented
    np.testing.assert_allclose(_transform("crop_flip", train=False)(image, None), unit)


def test_inception_crop_train_and_eval_and_plain_resize():
    image = _coordinates(40, 60)
    train = _transform("inception_crop", **{"image_size": 16})
    outs = train.batch([image] * 40, example_keys(0, np.arange(40)))
    assert all(o.shape == (16, 16, 3) for o in outs)
    flipped = [o[0, 0, 1] > o[0, -1, 1] for o in outs]  # columns decrease
    assert 5 < sum(flipped) < 35
    corners = {(round(float(o[0, 0, 0]), 3), round(float(min(o[0, 0, 1], o[0, -1, 1])), 3)) for o in outs}
    assert len(corners) > 20  # random crops, not the center crop of the eval split
    evaluated = _transform("inception_crop", train=False, image_size=16)(image, None)
    np.testing.assert_allclose(evaluated, transforms.center_crop(image, 16), atol=1e-6)
    resized = _transform("none", image_size=16)(image, None)
    np.testing.assert_allclose(resized, transforms.resize(image, 16, 16), atol=1e-6)
    assert _transform("none")(image, None).shape == (40, 60, 3)  # image_size 0: as it is
    rows = tiny_config(**{"data.view": "rows"}).data
    out = transforms.ImageTransform(rows, 0.0, 1.0, train=False)(image[:8, :12], None)
    np.testing.assert_array_equal(out, image[:8, :12].reshape(8, 36))  # one step per row, of W * C features


def test_normalization_uses_mean_and_std_per_channel():
    config = tiny_config().data
    out = transforms.ImageTransform(config, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0), train=False)(
        np.full((2, 2, 3), 0.5, np.float32), None)
    np.testing.assert_allclose(out[0, 0], [0.8, 1.2, 0.1], rtol=1e-6)
    assert out.flags["C_CONTIGUOUS"]


def test_normalization_is_float32_arithmetic_bit_for_bit():
    """uint8 / 255, minus the mean, over the std, each in float32, as training has always computed it (a mean or
    std kept in float64 rounds differently; eval losses and predictions would move)."""
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10's, as sources.py gives them
    image = _image()
    out = transforms.ImageTransform(tiny_config().data, mean, std, train=False)(image)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, (image.astype(np.float32) / np.float32(255) - np.float32(mean)) / np.float32(std))


def test_resize_is_bilinear_not_pils_default_filter():
    """Upsampling a two-pixel row to four: bilinear gives 0, 1/4, 3/4, 1 (PIL's default, bicubic, overshoots)."""
    row = transforms.resize(np.array([[[0.0], [1.0]]], np.float32), 1, 4)
    np.testing.assert_allclose(row[0, :, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    row = transforms.resize(np.array([[[0, 0, 0], [200, 200, 200]]], np.uint8), 1, 4)
    np.testing.assert_array_equal(row[0, :, 0], [0, 50, 150, 200])


class _ScriptedRng:
    """The draws inception_crop asks for, chosen by the test: each uniform() returns low + t * (high - low)
    for the next t of the script, and integers() the largest value of its range (the crop at the bottom right)."""

    def __init__(self, *ts):
        self.ts = list(ts)

    def uniform(self, low, high):
        return low + self.ts.pop(0) * (high - low)

    def integers(self, low, high=None):
        return (low if high is None else high) - 1


def test_inception_crop_window_lies_inside_the_image_at_every_place():
    """Area 0.36 of a 10 x 10 image at aspect 1: a 6 x 6 crop, which needs no resize to size 6, so the output is
    the window itself; at the largest place the window's corner is (4, 4): rows and columns 4 to 9."""
    image = _coordinates(10, 10)
    t_area = (0.36 - 0.08) / 0.92
    out = transforms.inception_crop(image, 6, _ScriptedRng(t_area, 0.5))
    np.testing.assert_array_equal(out, image[4:, 4:])


def test_inception_crop_takes_one_pixel_crops_but_never_empty_ones():
    """The smallest crops: 1 x 1 of a 2 x 2 image is a crop (resized to a flat image of its pixel); a draw that
    rounds either side to 0 pixels is a miss, and the next draw is taken."""
    image = _coordinates(2, 2)
    out = transforms.inception_crop(image, 3, _ScriptedRng(0.0, 0.5))  # area 0.08 * 4: 0.57 px a side -> 1
    np.testing.assert_allclose(out, np.broadcast_to(image[1, 1], (3, 3, 3)), atol=1e-6)
    one = _coordinates(2, 2)[:1, :1] + 0.25
    t_area = (0.25 - 0.08) / 0.92
    for t_ratio in (0.0, 1.0):  # 1 x 0 and 0 x 1 pixels, then a whole 1 x 1 crop at the next draw
        out = transforms.inception_crop(one, 2, _ScriptedRng(t_area, t_ratio, 1.0, 0.5))
        np.testing.assert_allclose(out, np.broadcast_to(one[0, 0], (2, 2, 3)), atol=1e-6)


def test_a_batch_is_its_examples_each_transformed_with_its_own_key():
    """The batch path (training) and the one-example path (tests, eval, inference) agree example by example,
    for every augmentation and the row view: one path cannot drift from the other."""
    images = [_image() + np.uint8(i) for i in range(6)]
    keys = example_keys(7, np.arange(100, 106))
    for augment in transforms.AUGMENTATIONS:
        for view in transforms.VIEWS:
            extra = {"image_size": 24} if augment == "inception_crop" else {}
            transform = _transform(augment, view=view, **extra)
            batch = transform.batch(images, keys)
            assert batch.dtype == np.float32 and batch.flags["C_CONTIGUOUS"]
            for image, key, out in zip(images, keys, batch):
                np.testing.assert_array_equal(out, transform(image, int(key)))
