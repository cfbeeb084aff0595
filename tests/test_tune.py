"""ef.tune.search: reproducible optuna searches that prune bad trials, keep the best model
and resume from a persistent storage."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from conftest import MLP, make_data

optuna = pytest.importorskip("optuna")


def build(trial):
    # an absurd LR range: most draws above ~0.3 diverge or stall, and get pruned
    model = ef.Model(MLP(64, trial.suggest_categorical("width", [16, 32]), 10, rngs=nnx.Rngs(0)))
    model.compile(ef.optimizers.adam(trial.suggest_float("lr", 1e-4, 10.0, log=True)),
                  "sparse_categorical_crossentropy", metrics=["accuracy"], seed=0)
    return model


def _search(digits, trials=6, **kwargs):
    x_train, y_train, x_val, y_val = digits
    return ef.tune.search(build, x_train, y_train, validation_data=(x_val, y_val),
                          objective="val_accuracy", trials=trials, epochs=4, batch_size=64,
                          seed=0, **kwargs)


def test_search_is_reproducible_prunes_and_keeps_the_best_model(digits, capsys):
    study = _search(digits)
    printed = capsys.readouterr().out
    again = _search(digits, verbose=0)
    assert capsys.readouterr().out == ""
    assert study.direction == "maximize"  # inferred from "accuracy"
    assert len(study.trials) == 6
    assert again.best_value == study.best_value
    assert again.best_params == study.best_params
    assert [t.params for t in again.trials] == [t.params for t in study.trials]
    assert [t.state for t in again.trials] == [t.state for t in study.trials]
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "no trial was pruned"
    assert all(t.last_step < 3 for t in pruned)  # stopped before the last epoch
    assert study.best_value > 0.9
    # the kept model is the best trial's, at the weights it ended with
    model = study.best_model
    logs = model.evaluate(digits[2], digits[3], batch_size=64, return_dict=True, verbose=0)
    assert logs["accuracy"] == pytest.approx(study.best_value, abs=1e-6)
    # progress lines and the ranked table: complete trials best first, then pruned ones
    assert "Trial 0 (1/6)" in printed and "pruned at epoch" in printed
    table = study.summary(print_fn=None)
    assert table in printed
    rows = [line.split() for line in table.splitlines()[1:]]
    assert rows[0][:3] == ["1", str(study.best_trial.number), "complete"]
    states = [row[2] for row in rows]
    assert states == sorted(states, key=lambda s: s != "complete")
    assert "width=" in table and "lr=" in table


def test_sqlite_study_resumes_and_reloads_the_best_weights(digits, tmp_path):
    storage = f"sqlite:///{tmp_path}/s.db"
    first = _search(digits, trials=3, storage=storage, study_name="t", verbose=0)
    assert len(first.trials) == 3
    # a new process's view (no trial run here): the best model comes from the saved weights
    reloaded = _search(digits, trials=0, storage=storage, study_name="t", verbose=0)
    assert reloaded._best_model is None
    model = reloaded.best_model
    logs = model.evaluate(digits[2], digits[3], batch_size=64, return_dict=True, verbose=0)
    assert logs["accuracy"] == pytest.approx(first.best_value, abs=1e-6)
    resumed = _search(digits, trials=2, storage=storage, study_name="t", verbose=0)
    assert len(resumed.trials) == 5
    assert [t.number for t in resumed.trials] == list(range(5))
    # a resumed study does not repeat its first draws
    assert resumed.trials[3].params != resumed.trials[0].params
    saved = glob.glob(str(tmp_path / "s-t-weights" / "trial_*"))
    assert saved == [str(tmp_path / "s-t-weights" / f"trial_{resumed.best_trial.number}")]
    with pytest.raises(ValueError, match="direction"):
        _search(digits, trials=0, storage=storage, study_name="t", direction="min")


def test_best_model_without_saved_weights_asks_to_retrain(tmp_path):
    x, y = make_data(96, din=8, classes=4)

    def small(trial):
        model = ef.Model(MLP(8, trial.suggest_categorical("width", [8]), 4,
                             rngs=nnx.Rngs(0)))
        model.compile(ef.optimizers.sgd(0.1), "sparse_categorical_crossentropy")
        return model

    args = dict(objective="loss", epochs=2, batch_size=32, verbose=0,
                storage=f"sqlite:///{tmp_path}/n.db", study_name="n")
    ef.tune.search(small, x, y, trials=1, **args)
    for path in glob.glob(str(tmp_path / "n-n-weights" / "*")):  # as if never saved
        os.rename(path, path + "-gone")
    study = ef.tune.search(small, x, y, trials=0, **args)
    assert study.direction == "minimize"
    with pytest.raises(RuntimeError, match="retrain_best"):
        study.best_model
    model = study.retrain_best()
    assert model.history.history["loss"][-1] == pytest.approx(study.best_value, rel=1e-6)


def test_diverging_trial_is_pruned_not_a_crash():
    x, y = make_data(64, din=8, classes=4)

    def diverge(trial):
        model = ef.Model(MLP(8, 8, 4, rngs=nnx.Rngs(0)))
        model.compile(ef.optimizers.sgd(trial.suggest_categorical("lr", [1e30])),
                      "sparse_categorical_crossentropy")
        return model

    with pytest.warns(ef.errors.DivergenceWarning, match="learning rate is too high"):
        study = ef.tune.search(diverge, x, y, objective="loss", trials=1, epochs=3,
                               batch_size=32, verbose=0, pruner=optuna.pruners.NopPruner())
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert "nan" in trial.user_attrs["easyfit_reason"] or "inf" in \
        trial.user_attrs["easyfit_reason"]
    assert "pruned (loss is" in study.summary(print_fn=None)


def test_argument_errors():
    x, y = make_data(32, din=8, classes=4)

    def small(trial):
        model = ef.Model(MLP(8, 4, 4, rngs=nnx.Rngs(0)))
        model.compile("sgd", "sparse_categorical_crossentropy")
        return model

    with pytest.raises(ValueError, match="validation"):
        ef.tune.search(small, x, y, objective="val_loss", trials=1)
    with pytest.raises(KeyError, match="accuracy"):
        ef.tune.search(small, x, y, objective="accuracy", trials=1, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="direction"):
        ef.tune.search(small, x, y, objective="loss", direction="up", trials=1)
    with pytest.raises(TypeError, match="ef.Model"):
        ef.tune.search(lambda trial: "not a model", x, y, objective="loss", trials=1,
                       verbose=0)


def test_missing_optuna_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'easyfit\[tune\]'"):
        ef.tune.search(build, np.zeros((4, 64), np.float32), np.zeros(4, np.int32))


def test_import_easyfit_does_not_import_optuna():
    script = textwrap.dedent("""
        import sys
        import easyfit as ef
        assert callable(ef.tune.search)
        assert "optuna" not in sys.modules, "import easyfit imported optuna"
        print("OK")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout
