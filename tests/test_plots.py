"""Plots: History.plot / plot_history learning curves, plot_lr_finder, History.to_dataframe."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from easyfit.plots import plot_history, plot_lr_finder

from conftest import MLP, make_data

PNG = b"\x89PNG\r\n\x1a\n"
CURVE_LABELS = ("train", "validation")


def hand_history(epochs=(0, 1, 2, 3, 4), val=True, lr=True) -> ef.History:
    history = ef.History()
    n = len(epochs)
    history.epoch = list(epochs)
    history.history = {"loss": list(np.linspace(1.0, 0.2, n)),
                       "accuracy": list(np.linspace(0.5, 0.9, n))}
    if val:
        history.history["val_loss"] = [0.9, 0.5, 0.4, 0.45, 0.6][:n]
        history.history["val_accuracy"] = [0.55, 0.7, 0.8, 0.78, 0.75][:n]
    if lr:
        history.history["learning_rate"] = list(np.geomspace(1e-3, 1e-5, n))
    return history


def curves(ax) -> list:
    return [line for line in ax.get_lines() if line.get_label() in CURVE_LABELS]


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [] if legend is None else [text.get_text() for text in legend.get_texts()]


def best_line_x(ax) -> float:
    lines = [line for line in ax.get_lines() if line.get_label().startswith("best epoch")]
    assert len(lines) == 1
    xs = np.unique(np.asarray(lines[0].get_xdata(), dtype=float))
    assert xs.size == 1 and lines[0].get_linestyle() == "--"
    return float(xs[0])


def assert_png(path) -> None:
    assert path.exists() and path.read_bytes()[:8] == PNG


# -- History.plot ------------------------------------------------------------------------


def test_history_plot_writes_png_one_panel_per_metric_plus_lr(tmp_path):
    path = tmp_path / "curves.png"
    fig = hand_history().plot(path)
    assert_png(path)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate"]
    loss_ax, acc_ax, lr_ax = fig.axes
    for ax in (loss_ax, acc_ax):
        assert [line.get_label() for line in curves(ax)] == ["train", "validation"]
    assert lr_ax.get_yscale() == "log"
    np.testing.assert_allclose(lr_ax.get_lines()[0].get_ydata(), hand_history().history["learning_rate"])


def test_best_epoch_is_argmin_of_val_loss_one_based(tmp_path):
    history = hand_history()
    best = int(np.argmin(history.history["val_loss"])) + 1  # val_loss lowest at index 2
    assert best == 3
    fig = plot_history(history)
    for ax in fig.axes:
        assert best_line_x(ax) == best
    for ax in fig.axes[:2]:
        assert f"best epoch {best}" in legend_texts(ax)
    # the dot sits on the validation loss at that epoch
    dots = [line for line in fig.axes[0].get_lines() if line.get_label() == "_best epoch dot"]
    assert len(dots) == 1
    assert dots[0].get_xdata()[0] == best
    assert dots[0].get_ydata()[0] == pytest.approx(history.history["val_loss"][best - 1])


def test_best_epoch_by_loss_without_validation_one_curve_per_panel():
    history = hand_history(val=False, lr=False)
    history.history["loss"] = [1.0, 0.6, 0.3, 0.35, 0.4]
    fig = history.plot()
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy"]
    for ax in fig.axes:
        assert [line.get_label() for line in curves(ax)] == ["train"]
        assert best_line_x(ax) == 3
        assert "best epoch 3" in legend_texts(ax)


def test_x_axis_uses_true_epochs_after_initial_epoch():
    fig = hand_history(epochs=(5, 6, 7, 8, 9)).plot()
    for line in curves(fig.axes[0]):
        np.testing.assert_array_equal(line.get_xdata(), [6, 7, 8, 9, 10])
    assert best_line_x(fig.axes[0]) == 8


def test_plot_from_real_fit(tmp_path):
    x, y = make_data(96)
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile("adamw", "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(x, y, epochs=3, validation_split=0.2, verbose=0)
    path = tmp_path / "fit.png"
    fig = history.plot(path)
    assert_png(path)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "accuracy", "learning rate"]
    for ax in fig.axes[:2]:
        assert len(curves(ax)) == 2
        np.testing.assert_array_equal(curves(ax)[0].get_xdata(), [1, 2, 3])
    best = int(np.argmin(history.history["val_loss"])) + 1
    assert best_line_x(fig.axes[0]) == best
    assert f"best epoch {best}" in legend_texts(fig.axes[0])

    frame = history.to_dataframe()
    assert list(frame.columns) == list(history.history)
    assert list(frame.index) == [1, 2, 3]
    np.testing.assert_allclose(frame["val_loss"], history.history["val_loss"])


def test_validation_freq_puts_val_points_at_validated_epochs():
    x, y = make_data(64)
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    history = model.fit(x, y, epochs=4, validation_split=0.25, validation_freq=2, verbose=0)
    assert len(history.history["val_loss"]) == 2
    fig = history.plot()
    train, val = curves(fig.axes[0])
    np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(val.get_xdata(), [2, 4])
    frame = history.to_dataframe()
    assert list(frame.index) == [1, 2, 3, 4]
    assert frame["val_loss"].isna().tolist() == [True, False, True, False]


def test_lr_panel_stays_log_when_schedule_reaches_zero():
    history = hand_history()
    history.history["learning_rate"][-1] = 0.0  # e.g. a cosine decay to 0
    assert history.plot().axes[-1].get_yscale() == "log"


def test_plot_history_accepts_a_dict_and_rejects_empty():
    fig = plot_history({"loss": [0.5, 0.3], "val_loss": [0.6, 0.4]})
    assert len(fig.axes) == 1 and best_line_x(fig.axes[0]) == 2
    with pytest.raises(ValueError, match="empty"):
        plot_history(ef.History())


def test_no_pyplot_state_and_backend_untouched(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    hand_history().plot(tmp_path / "a.png")
    plot_lr_finder(fake_lr_result(), tmp_path / "b.png")
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figures


def test_missing_matplotlib_says_what_to_install(monkeypatch, tmp_path):
    for name in [name for name in sys.modules if name.split(".")[0] == "matplotlib"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'easyfit\[plots\]'"):
        hand_history().plot(tmp_path / "x.png")
    with pytest.raises(ImportError, match=r"pip install 'easyfit\[plots\]'"):
        plot_lr_finder(fake_lr_result())
    assert not (tmp_path / "x.png").exists()


def test_import_easyfit_does_not_import_matplotlib():
    code = "import sys, easyfit, easyfit.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


# -- to_dataframe ------------------------------------------------------------------------


def test_to_dataframe_columns_and_index():
    history = hand_history(epochs=(2, 3, 4, 5, 6))
    frame = history.to_dataframe()
    assert list(frame.columns) == ["loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]
    assert list(frame.index) == [3, 4, 5, 6, 7] and frame.index.name == "epoch"
    np.testing.assert_allclose(frame.loc[5, "val_loss"], 0.4)


def test_to_dataframe_without_pandas(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        hand_history().to_dataframe()


def test_history_state_round_trip_keeps_key_epochs():
    x, y = make_data(64)
    model = ef.Model(MLP(rngs=nnx.Rngs(0)))
    model.compile("adam", "sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=4, validation_split=0.25, validation_freq=2, verbose=0)
    restored = ef.History()
    restored.set_state(history.get_state())
    assert restored.epochs_of("val_loss") == [1, 3]
    legacy = ef.History()  # a state saved before key epochs were recorded
    legacy.set_state({"history": history.history, "epoch": history.epoch})
    assert legacy.epochs_of("loss") == [0, 1, 2, 3] and legacy.epochs_of("val_loss") == [2, 3]


# -- plot_lr_finder ----------------------------------------------------------------------


def fake_lr_result(suggestion=3.2e-3):
    lrs = np.geomspace(1e-6, 1.0, 80)
    smoothed = 2.0 - 1.5 / (1 + np.exp(-(np.log10(lrs) + 4))) + np.exp(np.log10(lrs) * 3 + 3)
    raw = smoothed + np.random.default_rng(0).normal(0, 0.05, lrs.size)
    return types.SimpleNamespace(lrs=lrs, losses=list(raw), smoothed=smoothed,
                                 suggestion=suggestion)


def test_plot_lr_finder_png_log_x_and_suggestion(tmp_path):
    path = tmp_path / "lr.png"
    result = fake_lr_result()
    fig = plot_lr_finder(result, path)
    assert_png(path)
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert ax.get_title() == "Learning-rate range test"
    assert "suggested lr = 3.2e-03" in legend_texts(ax)
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:2] == ["loss", "smoothed loss"]
    raw, smooth = ax.get_lines()[:2]
    assert raw.get_alpha() < 1 and (smooth.get_alpha() in (None, 1))
    (mark,) = [line for line in ax.get_lines() if line.get_label().startswith("suggested")]
    assert np.unique(mark.get_xdata()).tolist() == [pytest.approx(3.2e-3)]
    # the blow-up at the end (loss ~ 1e3) is cut off the y-range
    assert ax.get_ylim()[1] < 5


def test_plot_lr_finder_without_suggestion():
    fig = plot_lr_finder(fake_lr_result(suggestion=None))
    (ax,) = fig.axes
    assert ax.get_xscale() == "log"
    assert not any(text.startswith("suggested") for text in legend_texts(ax))
