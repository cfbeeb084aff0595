"""Image augmentations for ``compile(augment=...)``, run on the device inside the train step.

Each function here returns an augmentation ``fn((x, y), rng) -> (x, y)`` that changes the
images ``x`` (channels last: ``(batch, height, width[, channels])``) and passes the labels
through. ``fit`` calls it on training batches only, with a fresh key every step, so
``evaluate``, ``predict`` and validation see the images as they are. Every row draws its own
shift or flip. Shifts are whole pixels (no interpolation).

Keras has the same ideas as layers (``RandomTranslation``, ``RandomCrop``, ``RandomFlip``);
the fill modes keep Keras's names. Unlike Keras's ``RandomTranslation``, shifts are given in
pixels, not as fractions of the image size.

Examples:
    >>> import easyfit as ef
    >>> model.compile("adamw", "sparse_categorical_crossentropy", ["accuracy"],
    ...               augment=ef.augment.compose(ef.augment.random_translation(4),
    ...                                          ef.augment.random_flip()))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["Augment", "compose", "random_crop", "random_flip", "random_translation"]

Augment = Callable[[tuple[Any, Any], jax.Array], tuple[Any, Any]]
"""``fn((x, y), rng) -> (x, y)``: the signature ``compile(augment=...)`` takes."""

# Keras's fill modes -> jnp.pad modes. Keras "reflect" (d c b a | a b c d) repeats the edge
# pixel: numpy calls that "symmetric".
_FILL_MODES = {"constant": "constant", "nearest": "edge", "reflect": "symmetric", "wrap": "wrap"}
_FLIP_MODES = ("horizontal", "vertical", "horizontal_and_vertical")


def random_translation(max_shift: int | tuple[int, int], *, fill_mode: str = "constant",
                       fill_value: float = 0.0) -> Augment:
    """Shifts each image by a random whole number of pixels, up to ``max_shift`` each way.

    Each row draws its vertical and horizontal shift uniformly from
    ``[-max_shift, max_shift]``; the pixels shifted in are filled by ``fill_mode``.

    Args:
        max_shift: the largest shift in pixels, one number for both axes or
            ``(height, width)``.
        fill_mode: ``"constant"`` (``fill_value``), ``"nearest"`` (the edge pixel repeated),
            ``"reflect"`` or ``"wrap"``, as in Keras.
        fill_value: the value shifted in when ``fill_mode="constant"``.

    Returns:
        An augmentation ``fn((x, y), rng) -> (x, y)`` for ``compile(augment=...)``.

    Examples:
        >>> fn = ef.augment.random_translation(2, fill_mode="nearest")  # doctest: +SKIP
        >>> x, y = fn((images, labels), jax.random.key(0))               # doctest: +SKIP
    """
    shift = _pair("max_shift", max_shift)
    return _crop(None, shift, shift, _fill("fill_mode", fill_mode), fill_value)


def random_crop(height: int, width: int, *, padding: int | tuple[int, int] = 0,
                fill_mode: str = "constant", fill_value: float = 0.0) -> Augment:
    """Pads each image by ``padding`` pixels on every side, then crops ``(height, width)``
    at a random place (each row its own).

    ``random_crop(32, 32, padding=4)`` on 32x32 images is the usual CIFAR augmentation
    (the same as ``random_translation(4)``). A crop smaller than the image changes the
    input shape: the model then sees other shapes in ``evaluate`` and ``predict`` unless
    you crop those inputs too (Keras's ``RandomCrop`` crops the centre at inference).

    Args:
        height: the crop's height in pixels, at most the padded image's.
        width: the crop's width in pixels, at most the padded image's.
        padding: pixels added on each side first, one number or ``(height, width)``.
        fill_mode: how the padding is filled: ``"constant"``, ``"nearest"``, ``"reflect"``
            or ``"wrap"``, as in Keras.
        fill_value: the padding's value when ``fill_mode="constant"``.

    Returns:
        An augmentation ``fn((x, y), rng) -> (x, y)`` for ``compile(augment=...)``.
    """
    size = (_positive("height", height), _positive("width", width))
    pad = _pair("padding", padding)
    return _crop(size, pad, None, _fill("fill_mode", fill_mode), fill_value)


def random_flip(mode: str = "horizontal", probability: float = 0.5) -> Augment:
    """Mirrors each image with probability ``probability``, each row drawn on its own.

    Args:
        mode: ``"horizontal"`` (left-right), ``"vertical"`` (up-down) or
            ``"horizontal_and_vertical"`` (each axis drawn on its own), as in Keras.
        probability: the chance that a row is flipped (per axis).

    Returns:
        An augmentation ``fn((x, y), rng) -> (x, y)`` for ``compile(augment=...)``.
    """
    if mode not in _FLIP_MODES:
        raise ValueError(f"mode must be one of {_FLIP_MODES}; got {mode!r}.")
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1]; got {probability!r}.")
    axes = {"horizontal": (2,), "vertical": (1,), "horizontal_and_vertical": (1, 2)}[mode]

    def flip(batch: tuple[Any, Any], rng: jax.Array) -> tuple[Any, Any]:
        x, y = batch
        _check_images(x)
        for axis, key in zip(axes, jax.random.split(rng, len(axes))):
            chosen = jax.random.bernoulli(key, probability, (x.shape[0],))
            x = jnp.where(chosen.reshape((-1,) + (1,) * (x.ndim - 1)), jnp.flip(x, axis), x)
        return x, y

    return flip


def compose(*fns: Augment) -> Augment:
    """Runs augmentations one after another, each with its own key split from ``rng``.

    Args:
        *fns: augmentations ``fn((x, y), rng) -> (x, y)``, applied in order.

    Returns:
        One augmentation ``fn((x, y), rng) -> (x, y)``.
    """
    for index, fn in enumerate(fns):
        if not callable(fn):
            raise TypeError(f"compose: argument {index} is not callable; got {fn!r}.")

    def composed(batch: tuple[Any, Any], rng: jax.Array) -> tuple[Any, Any]:
        for fn, key in zip(fns, jax.random.split(rng, max(len(fns), 1))):
            batch = fn(batch, key)
        return batch

    return composed


# -- helpers ---------------------------------------------------------------------------------

def _crop(size: tuple[int, int] | None, pad: tuple[int, int],
          max_shift: tuple[int, int] | None, fill_mode: str, fill_value: float) -> Augment:
    """Pads by ``pad`` and cuts a window per row: ``size`` anywhere (crop), or the image's
    own size at most ``max_shift`` from the centre (translation)."""

    def augment(batch: tuple[Any, Any], rng: jax.Array) -> tuple[Any, Any]:
        x, y = batch
        _check_images(x)
        height, width = size or x.shape[1:3]
        padded_h, padded_w = x.shape[1] + 2 * pad[0], x.shape[2] + 2 * pad[1]
        if height > padded_h or width > padded_w:
            raise ValueError(f"random_crop: a ({height}, {width}) crop does not fit images of "
                             f"{x.shape[1:3]} padded to ({padded_h}, {padded_w}).")
        widths = [(0, 0), pad[:1] * 2, pad[1:] * 2] + [(0, 0)] * (x.ndim - 3)
        extra = {"constant_values": jnp.asarray(fill_value, x.dtype)} \
            if fill_mode == "constant" else {}
        padded = jnp.pad(x, widths, mode=fill_mode, **extra)
        low = (0, 0) if max_shift is None else (pad[0] - max_shift[0], pad[1] - max_shift[1])
        high = (padded_h - height, padded_w - width) if max_shift is None else \
            (pad[0] + max_shift[0], pad[1] + max_shift[1])
        starts = jax.random.randint(rng, (x.shape[0], 2), jnp.array(low), jnp.array(high) + 1)

        def window(image, start):
            return jax.lax.dynamic_slice(image, (start[0], start[1]) + (0,) * (image.ndim - 2),
                                         (height, width) + image.shape[2:])

        return jax.vmap(window)(padded, starts), y

    return augment


def _check_images(x: Any) -> None:
    if not hasattr(x, "ndim") or x.ndim < 3:
        raise ValueError("augment: images must be one array of shape (batch, height, width"
                         f"[, channels]); got {getattr(x, 'shape', type(x).__name__)}.")


def _pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                 for v in pair):
        raise ValueError(f"{name} must be a pixel count >= 0 or a (height, width) pair of "
                         f"them; got {value!r}.")
    return pair


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive pixel count; got {value!r}.")
    return value


def _fill(name: str, mode: str) -> str:
    if mode not in _FILL_MODES:
        raise ValueError(f"{name} must be one of {tuple(_FILL_MODES)}; got {mode!r}.")
    return _FILL_MODES[mode]
