"""``ef.augment``: per-image shifts, crops and flips for ``compile(augment=...)``."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import easyfit as ef

BATCH, SIDE = 64, 6


def _images(channels: int = 2) -> np.ndarray:
    return np.random.default_rng(0).uniform(1, 2, (BATCH, SIDE, SIDE, channels)).astype(
        np.float32)


def _labels() -> np.ndarray:
    return np.arange(BATCH, dtype=np.int32)


def _shifted(image: np.ndarray, dy: int, dx: int, mode: str = "constant") -> np.ndarray:
    """``image`` moved down by ``dy`` and right by ``dx``, filled by np.pad's ``mode``."""
    pad = 3
    padded = np.pad(image, [(pad, pad), (pad, pad), (0, 0)], mode=mode)
    return padded[pad - dy:pad - dy + SIDE, pad - dx:pad - dx + SIDE]


def _shifts_found(x: np.ndarray, out: np.ndarray, max_shift: int,
                  mode: str = "constant") -> list[tuple[int, int]]:
    """The one shift within ``max_shift`` that turns each row of ``x`` into ``out``'s."""
    found = []
    for image, result in zip(x, out):
        matches = [(dy, dx) for dy, dx in itertools.product(range(-max_shift, max_shift + 1),
                                                            repeat=2)
                   if np.array_equal(_shifted(image, dy, dx, mode), result)]
        assert len(matches) == 1, matches
        found.append(matches[0])
    return found


@pytest.mark.parametrize("fn", [ef.augment.random_translation(2),
                                ef.augment.random_crop(SIDE, SIDE, padding=1),
                                ef.augment.random_flip("horizontal_and_vertical"),
                                ef.augment.compose(ef.augment.random_translation(1),
                                                   ef.augment.random_flip())],
                         ids=["translation", "crop", "flip", "compose"])
def test_shapes_and_dtype_are_kept_and_labels_pass_through(fn):
    x, y = _images(), _labels()
    out_x, out_y = jax.jit(fn)((x, y), jax.random.key(0))
    assert out_x.shape == x.shape and out_x.dtype == x.dtype
    np.testing.assert_array_equal(out_y, y)
    assert not np.array_equal(out_x, x)


def test_translation_shifts_each_image_whole_with_zeros_shifted_in():
    x = _images()
    out, _ = jax.jit(ef.augment.random_translation(2))((x, _labels()), jax.random.key(0))
    shifts = _shifts_found(x, np.asarray(out), 2)
    assert len(set(shifts)) >= 15              # rows draw their own shifts (25 possible)
    assert {dy for dy, _ in shifts} == {dx for _, dx in shifts} == set(range(-2, 3))

    again, _ = jax.jit(ef.augment.random_translation(2))((x, _labels()), jax.random.key(0))
    np.testing.assert_array_equal(again, out)  # a fixed key gives the same shifts
    other, _ = ef.augment.random_translation(2)((x, _labels()), jax.random.key(1))
    assert not np.array_equal(other, out)


def test_translation_fill_modes_and_per_axis_limits():
    x = _images()
    out, _ = ef.augment.random_translation(1, fill_mode="nearest")((x, _labels()),
                                                                   jax.random.key(2))
    assert len(set(_shifts_found(x, np.asarray(out), 1, mode="edge"))) > 1
    out, _ = ef.augment.random_translation(1, fill_mode="wrap")((x, _labels()),
                                                                jax.random.key(2))
    _shifts_found(x, np.asarray(out), 1, mode="wrap")
    out, _ = ef.augment.random_translation(1, fill_value=-1.0)((x, _labels()),
                                                               jax.random.key(3))
    assert set(np.unique(np.asarray(out))) & {-1.0, 0.0} == {-1.0}

    out, _ = ef.augment.random_translation((0, 2))((x, _labels()), jax.random.key(4))
    shifts = _shifts_found(x, np.asarray(out), 2)
    assert {dy for dy, _ in shifts} == {0} and len({dx for _, dx in shifts}) == 5
    out, _ = ef.augment.random_translation(0)((x, _labels()), jax.random.key(4))
    np.testing.assert_array_equal(out, x)


def test_crop_after_padding_and_smaller_crops():
    x = _images()
    out, _ = ef.augment.random_crop(SIDE, SIDE, padding=2)((x, _labels()), jax.random.key(0))
    assert len(set(_shifts_found(x, np.asarray(out), 2))) >= 15

    out, _ = ef.augment.random_crop(SIDE + 2, SIDE + 2, padding=1)((x, _labels()),
                                                                   jax.random.key(0))
    np.testing.assert_array_equal(out, np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)]))

    out, _ = ef.augment.random_crop(4, 3)((x, _labels()), jax.random.key(0))
    assert out.shape == (BATCH, 4, 3, 2)
    corners = set()
    for image, crop in zip(x, np.asarray(out)):
        starts = [(i, j) for i in range(3) for j in range(4)
                  if np.array_equal(image[i:i + 4, j:j + 3], crop)]
        assert len(starts) == 1
        corners.add(starts[0])
    assert len(corners) > 6


def test_flips_choose_per_row_and_follow_the_probability():
    x = _images()
    out, _ = ef.augment.random_flip()((x, _labels()), jax.random.key(0))
    flipped = [np.array_equal(o, i[:, ::-1]) for i, o in zip(x, np.asarray(out))]
    kept = [np.array_equal(o, i) for i, o in zip(x, np.asarray(out))]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54

    out, _ = ef.augment.random_flip("vertical", probability=1.0)((x, _labels()),
                                                                 jax.random.key(0))
    np.testing.assert_array_equal(out, x[:, ::-1])
    out, _ = ef.augment.random_flip(probability=0.0)((x, _labels()), jax.random.key(0))
    np.testing.assert_array_equal(out, x)


def test_images_without_channels_and_compose_order():
    x = _images()[..., 0]
    out, _ = jax.jit(ef.augment.random_translation(1))((x, _labels()), jax.random.key(0))
    assert out.shape == x.shape

    calls = []

    def tag(name):
        def fn(batch, rng):
            calls.append(name)
            return batch[0] + 1, batch[1]
        return fn

    out, _ = ef.augment.compose(tag("a"), tag("b"))((x, _labels()), jax.random.key(0))
    assert calls == ["a", "b"]
    np.testing.assert_array_equal(out, x + 2)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="max_shift"):
        ef.augment.random_translation(-1)
    with pytest.raises(ValueError, match="fill_mode"):
        ef.augment.random_translation(1, fill_mode="mirror")
    with pytest.raises(ValueError, match="padding"):
        ef.augment.random_crop(4, 4, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="height"):
        ef.augment.random_crop(0, 4)
    with pytest.raises(ValueError, match="mode"):
        ef.augment.random_flip("diagonal")
    with pytest.raises(ValueError, match="probability"):
        ef.augment.random_flip(probability=2)
    with pytest.raises(TypeError, match="argument 1"):
        ef.augment.compose(ef.augment.random_flip(), "flip")
    with pytest.raises(ValueError, match="images must be"):
        ef.augment.random_flip()((jnp.zeros((4, 8)), None), jax.random.key(0))
    with pytest.raises(ValueError, match="does not fit"):
        ef.augment.random_crop(9, 9, padding=1)((jnp.zeros((2, 6, 6, 1)), None),
                                                jax.random.key(0))
