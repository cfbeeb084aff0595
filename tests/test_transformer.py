"""The transformer example (``examples/char_transformer.py``) at a tiny size: its data
functions, that it trains through ``fit``, that ``fit`` matches a hand-written NNX loop, and
that it runs end to end."""

from __future__ import annotations

import math
import os
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import easyfit as ef

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "examples"))
import char_transformer  # noqa: E402
from models import CharTransformer  # noqa: E402

TINY = dict(width=32, depth=2, heads=2)
UNTRAINED = math.log(256)  # ~5.55 nats/byte: uniform over the bytes


@pytest.fixture(scope="module")
def text() -> np.ndarray:
    return char_transformer.load_text(60_000)


def test_load_text_is_the_stdlib_source_deterministically(text):
    assert text.dtype == np.uint8 and len(text) == 60_000
    np.testing.assert_array_equal(char_transformer.load_text(60_000), text)
    first = char_transformer.source_files()[0]
    assert first.endswith(".py") and "site-packages" not in first
    with open(first, "rb") as f:
        head = f.read(1000)
    assert bytes(text[:len(head)]) == head


def test_windows_hold_the_next_byte_and_the_split_holds_out_the_tail(text):
    train, val = char_transformer.split_text(text, 0.1)
    assert len(train) == 54_000 and len(val) == 6_000
    np.testing.assert_array_equal(np.concatenate([train, val]), text)
    x, y = char_transformer.make_windows(train, 16)
    assert x.shape == y.shape == ((54_000 - 1) // 16, 16) and x.dtype == np.int32
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])       # y is x shifted by one byte
    np.testing.assert_array_equal(y[:, -1], x[1:, 0].tolist() + [train[len(x) * 16]])
    np.testing.assert_array_equal(x.reshape(-1), train[:x.size])  # windows tile the text
    with pytest.raises(ValueError, match="shorter than one window"):
        char_transformer.make_windows(train[:16], 16)
    with pytest.raises(ValueError, match="validation_fraction"):
        char_transformer.split_text(text, 1.0)


def test_the_example_trains_and_samples_end_to_end(capsys):
    # ~100 steps of a 2-block width-32 model. Untrained: 5.55 nats/byte; knowing only the
    # byte frequencies: 3.2 on this held-out text. Measured: 2.63. The bar, 3.0, asks for
    # more than byte frequencies, with margin for other machines and Python versions.
    char_transformer.main(["--max-bytes", "60000", "--seq-len", "32", "--width", "32",
                           "--depth", "2", "--heads", "2", "--batch-size", "32",
                           "--epochs", "2", "--dropout", "0", "--learning-rate", "1e-2",
                           "--sample-bytes", "24", "--verbose", "0"])
    out = capsys.readouterr().out
    loss = float(out.split("validation loss: ")[1].split(" nats/byte")[0])
    bits = float(out.split("(")[-1].split(" bits/byte")[0])
    assert loss < 3.0, out
    assert bits == pytest.approx(loss / math.log(2), abs=1e-3)
    sample = out.split("sample:\n")[1].split("\nvalidation loss")[0]
    assert sample.startswith("def ")


def test_generate_appends_length_bytes_with_a_fixed_window():
    model = char_transformer.build(seq_len=8, dropout=0.0, **TINY)
    out = char_transformer.generate(model, b"import ", 12, seq_len=8)   # runs past the window
    assert len(out) == len(b"import ") + 12 and out.startswith(b"import ")
    again = char_transformer.generate(model, b"import ", 12, seq_len=8)
    assert out == again                                                # greedy: deterministic
    with pytest.raises(ValueError, match="prompt"):
        char_transformer.generate(model, b"", 3, seq_len=8)


# -- fit equals the loop a Flax user writes by hand --------------------------------------------

SEQ, BATCH, EPOCHS, PEAK, DECAY = 16, 16, 2, 3e-3, 0.01


def _hand_loop(module: CharTransformer, tx: optax.GradientTransformation, x: np.ndarray,
               y: np.ndarray) -> CharTransformer:
    """The training loop of Flax's guides: ``nnx.Optimizer``, an ``nnx.jit`` step with
    ``nnx.value_and_grad``, in-order batches, the loss the mean token cross-entropy."""
    optimizer = nnx.Optimizer(module, tx, wrt=nnx.Param)

    @nnx.jit(graph=True)
    def train_step(model, optimizer, xb, yb):
        def loss_fn(model):
            logits = model(xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        loss, grads = nnx.value_and_grad(loss_fn, graph=True)(model)
        optimizer.update(model, grads)
        return loss

    for _ in range(EPOCHS):
        for start in range(0, len(x), BATCH):
            train_step(module, optimizer, x[start:start + BATCH], y[start:start + BATCH])
    return module


def _params(module: nnx.Module) -> dict[str, np.ndarray]:
    state = nnx.state(module, nnx.Param, graph=True)
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


def _without_key_bias(params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drops the key third of each attention ``qkv`` bias. Adding ``b`` to every key adds
    ``q . b`` to all of a query's scores alike, which softmax ignores: its gradient is zero
    but for rounding (~1e-10), and Adam divides that noise by its own root mean square, so
    two correct implementations move those entries by up to the learning rate, in
    directions set by rounding. Nothing downstream depends on them (the outputs are
    compared instead)."""
    out = dict(params)
    for name, value in params.items():
        if "qkv" in name and "bias" in name:
            width = value.shape[0] // 3
            out[name] = np.concatenate([value[:width], value[2 * width:]])
    return out


def test_fit_matches_a_hand_written_nnx_loop(text):
    x, y = char_transformer.make_windows(text[:4 * BATCH * SEQ + 1], SEQ)   # 4 batches
    assert len(x) == 4 * BATCH
    total = EPOCHS * len(x) // BATCH
    schedule = optax.warmup_cosine_decay_schedule(0.0, PEAK, warmup_steps=round(0.25 * total),
                                                  decay_steps=total, end_value=0.0)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=DECAY))

    # Both start from the same init: one module built from nnx.Rngs(0), cloned (building it
    # again from the same seed gives the same weights, but eager init is slow here).
    initial = CharTransformer(vocab=256, seq_len=SEQ, dropout=0.0, **TINY, rngs=nnx.Rngs(0))
    hand = _hand_loop(nnx.clone(initial), tx, x, y)

    model = ef.Model(nnx.clone(initial))
    model.compile(optimizer=ef.optimizers.adamw(
                      learning_rate=ef.schedules.warmup_cosine(peak=PEAK, warmup=0.25),
                      weight_decay=DECAY, clipnorm=1.0),
                  loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)

    trained, reference = _without_key_bias(_params(model.module)), _without_key_bias(_params(hand))
    assert trained.keys() == reference.keys() and len(trained) == 6 + 12 * TINY["depth"]
    for name, want in reference.items():
        np.testing.assert_allclose(trained[name], want, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(model.predict(x[:BATCH], verbose=0), hand(x[:BATCH]),
                               rtol=1e-5, atol=1e-5)
    # the weights moved well beyond the tolerance, so the comparison means something
    start = _without_key_bias(_params(initial))
    assert max(np.abs(trained[k] - start[k]).max() for k in start) > 1e-3
