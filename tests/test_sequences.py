"""Sequence outputs: ``(B, T, V)`` logits with ``(B, T)`` labels, losses and metrics per
token, reduced as the weighted mean over real tokens; per-token masks through
``sample_weight`` of shape ``(N, T)``."""

from __future__ import annotations

import numpy as np
import optax
import pytest
from flax import nnx

import easyfit as ef
from data_fixtures import forward, params_of

VOCAB, T = 11, 6


class TokenModel(nnx.Module):
    """Token ids ``(B, T)`` -> logits ``(B, T, VOCAB)``, each position on its own."""

    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, 8, rngs=rngs)
        self.out = nnx.Linear(8, VOCAB, rngs=rngs)

    def __call__(self, ids):
        return self.out(nnx.tanh(self.embed(ids)))


def _data(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, (n, T)).astype(np.int32)
    y = (x + 1) % VOCAB
    lengths = rng.integers(2, T + 1, n)  # each sequence's real tokens; the rest is padding
    mask = (np.arange(T) < lengths[:, None]).astype(np.float32)
    return x, y, mask


def _model(lr: float = 0.0, **compile_kw) -> ef.Model:
    model = ef.Model(TokenModel(rngs=nnx.Rngs(0)))
    model.compile(optimizer=optax.sgd(lr), loss="sparse_categorical_crossentropy", **compile_kw)
    return model


def _token_losses(model: ef.Model, x, y) -> np.ndarray:
    logits = forward(model.module, x)
    return np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def test_per_token_loss_is_the_mean_over_tokens_without_a_mask():
    x, y, _ = _data()
    model = _model()
    logs = model.evaluate(x, y, batch_size=8, return_dict=True, verbose=0)
    assert logs["loss"] == pytest.approx(_token_losses(model, x, y).mean(), rel=1e-5)


def test_a_token_mask_gives_the_weighted_mean_over_real_tokens():
    x, y, mask = _data()
    model = _model()
    losses = _token_losses(model, x, y)
    logs = model.evaluate(x, y, sample_weight=mask, batch_size=8, return_dict=True, verbose=0)
    assert logs["loss"] == pytest.approx((losses * mask).sum() / mask.sum(), rel=1e-5)
    assert logs["loss"] != pytest.approx(losses.mean(), rel=1e-3)


@pytest.mark.parametrize("masked", [False, True])
def test_a_padded_final_batch_of_sequences_leaves_the_loss_unchanged(masked):
    x, y, mask = _data(n=37)                      # 37 = 4 * 8 + 5: the last batch is padded
    weight = mask if masked else None
    model = _model()
    whole = model.evaluate(x, y, sample_weight=weight, batch_size=37, return_dict=True, verbose=0)
    padded = model.evaluate(x, y, sample_weight=weight, batch_size=8, return_dict=True,
                            verbose=0)
    assert padded["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    history = _model().fit(x, y, sample_weight=weight, batch_size=8, epochs=1, shuffle=False,
                           verbose=0)
    assert history.history["loss"][0] == pytest.approx(whole["loss"], rel=1e-6)  # lr 0


def test_token_accuracy_and_its_masked_weighted_form():
    x, y, mask = _data()
    model = _model(metrics=["accuracy"], weighted_metrics=["accuracy"])
    hits = (forward(model.module, x).argmax(-1) == y).astype(np.float32)
    logs = model.evaluate(x, y, sample_weight=mask, batch_size=16, return_dict=True, verbose=0)
    assert list(logs) == ["loss", "accuracy", "weighted_accuracy"]       # Keras's names
    assert logs["accuracy"] == pytest.approx(hits.mean(), abs=1e-6)       # every token
    assert logs["weighted_accuracy"] == pytest.approx((hits * mask).sum() / mask.sum(),
                                                      abs=1e-6)


def test_metrics_that_share_a_name_are_named_apart_as_keras_names_them():
    mine = ef.metrics.get("mae")
    plain, weighted = ef.metrics.named_apart(
        [ef.metrics.get("accuracy"), ef.metrics.get("accuracy"), mine],
        [ef.metrics.get("accuracy"), ef.metrics.get("accuracy"), ef.metrics.get("mse")])
    assert [m.name for m in plain + weighted] == [
        "accuracy", "accuracy_1", "mae", "weighted_accuracy", "weighted_accuracy_1", "mse"]
    assert plain[2] is mine                                               # not renamed: as given


@pytest.mark.parametrize("steps_per_execution", [1, 4])
def test_masked_tokens_never_move_the_weights(steps_per_execution):
    """Labels under a zero weight (even out of range, as -100 paddings are) change nothing."""
    x, y, mask = _data()
    rng = np.random.default_rng(1)
    noisy = np.where(mask > 0, y, rng.integers(0, VOCAB, y.shape))
    garbage = np.where(mask > 0, y, -100)
    trained = []
    for labels in (noisy, garbage):
        model = _model(lr=0.5, steps_per_execution=steps_per_execution)
        history = model.fit(x, labels, sample_weight=mask, batch_size=8, epochs=2,
                            shuffle=False, verbose=0)
        assert np.isfinite(history.history["loss"]).all()
        trained.append(params_of(model.module))
    for a, b in zip(*trained):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(a, b) for a, b in zip(trained[0],
                                                      params_of(TokenModel(nnx.Rngs(0)))))


def test_one_hot_token_labels_match_integer_labels():
    x, y, mask = _data()
    sparse = _model().evaluate(x, y, sample_weight=mask, batch_size=8, return_dict=True,
                               verbose=0)
    model = ef.Model(TokenModel(rngs=nnx.Rngs(0)))
    model.compile(optimizer=optax.sgd(0.0), loss="categorical_crossentropy",
                  metrics=["accuracy"])
    one_hot = np.eye(VOCAB, dtype=np.float32)[y]
    logs = model.evaluate(x, one_hot, sample_weight=mask, batch_size=8, return_dict=True,
                          verbose=0)
    assert logs["loss"] == pytest.approx(sparse["loss"], rel=1e-5)


def test_per_token_weights_from_an_iterable_with_a_short_last_batch():
    x, y, mask = _data(n=37)
    batches = [(x[i:i + 8], y[i:i + 8], mask[i:i + 8]) for i in range(0, 37, 8)]
    model = _model()
    from_arrays = model.evaluate(x, y, sample_weight=mask, batch_size=8, return_dict=True,
                                 verbose=0)
    from_batches = model.evaluate(batches, return_dict=True, verbose=0)
    assert from_batches["loss"] == pytest.approx(from_arrays["loss"], rel=1e-6)


def test_labels_of_the_wrong_rank_get_one_clear_error():
    x, y, _ = _data()
    with pytest.raises(ValueError, match=r"expected integer labels of shape \(8, 6\): one per "
                                         r"token"):
        _model().fit(x, y[:, 0], batch_size=8, verbose=0)


def test_sample_weights_that_fit_neither_examples_nor_tokens_are_refused():
    x, y, _ = _data()
    with pytest.raises(ValueError, match=r"sample_weight has shape \(40, 3\).*per token"):
        _model().fit(x, y, sample_weight=np.ones((40, 3)), batch_size=8, verbose=0)


def test_per_token_weights_need_a_per_token_loss():
    rng = np.random.default_rng(0)
    model = ef.Model(nnx.Linear(4, 3, rngs=nnx.Rngs(0)))
    model.compile(optimizer="sgd", loss=lambda y, p: ((y - p) ** 2).mean(-1))
    x, y = rng.normal(size=(16, 4)), rng.normal(size=(16, 3))
    with pytest.raises(ValueError, match=r"sample_weight of shape \(8, 3\) cannot weight"):
        model.fit(x, y, sample_weight=np.ones((16, 3)), batch_size=8, verbose=0)
