"""keras/src/callbacks/csv_logger_test.py, translated."""

from __future__ import annotations

import csv

import numpy as np

import easyfit as ef
from keras_like import Dense2


def _model():
    model = ef.Model(Dense2(5, 2, 1))
    model.compile(ef.optimizers.sgd(0.01, momentum=0.0), "mse", ["mse"])
    return model


def _data():
    rng = np.random.default_rng(1337)
    return ((rng.random((10, 5), np.float32), rng.random((10, 1), np.float32)),
            (rng.random((10, 5), np.float32), rng.random((10, 1), np.float32)))


def test_CSVLogger(tmp_path):
    path, sep = str(tmp_path / "log.tsv"), "\t"
    train, validation = _data()
    # case 1: a new file with the separator given
    _model().fit(*train, batch_size=5, validation_data=validation, epochs=1, verbose=0,
                 callbacks=[ef.callbacks.CSVLogger(path, separator=sep)])
    with open(path) as f:
        assert csv.Sniffer().sniff(f.read()).delimiter == sep
    # case 2: append to the file, header skipped; case 3: the same logger object reused
    model, callbacks = _model(), [ef.callbacks.CSVLogger(path, separator=sep, append=True)]
    model.fit(*train, batch_size=5, validation_data=validation, epochs=1, verbose=0,
              callbacks=callbacks)
    model.fit(*train, batch_size=5, validation_data=validation, epochs=2, verbose=0,
              callbacks=callbacks)
    with open(path) as f:
        lines = f.readlines()
    # easyfit logs learning_rate too: one more column than Keras's 5
    assert all(line.count(sep) == 5 for line in lines)
    assert len(lines) == 5
    assert " ".join(lines).count("epoch") == 1


def test_CSVLogger_validation_freq(tmp_path):
    """Keras: val_* columns from the first row ("NA" where validation did not run)."""
    path = str(tmp_path / "log.csv")
    train, validation = _data()
    history = _model().fit(*train, batch_size=5, validation_data=validation,
                           validation_freq=3, epochs=5, verbose=0,
                           callbacks=[ef.callbacks.CSVLogger(path)])
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    for index, row in enumerate(rows, 1):
        assert "val_loss" in row
        expected = str(history.history["val_loss"][0]) if index == 3 else "NA"
        assert row["val_loss"] == expected


def test_stop_training_csv(tmp_path):
    """With TerminateOnNaN, the CSV keeps one valid row per epoch run."""
    path = str(tmp_path / "log.csv")
    train, validation = _data()
    model = ef.Model(Dense2(5, 2, 1))
    model.compile(ef.optimizers.sgd(1e30, momentum=0.0), "mse")
    history = model.fit(*train, batch_size=5, validation_data=validation, epochs=20,
                        verbose=0, callbacks=[ef.callbacks.TerminateOnNaN(),
                                              ef.callbacks.CSVLogger(path)])
    assert len(history.history["loss"]) < 20
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(history.history["loss"])
    assert [int(row["epoch"]) for row in rows] == history.epoch
