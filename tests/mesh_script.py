"""The 8-device checks of test_distribute.py, run in a subprocess started with
``--xla_force_host_platform_device_count=8`` (JAX reads it before its first use).

    python mesh_script.py OUT.json CHECKPOINT_DIR

Trains the same model with the same data on 1 device and with DataParallel, FSDP and a
2x4 ModelParallel over 8 (and with DataParallel fed from the host rather than from the
arrays held on the devices); records per-epoch losses, the shardings of parameters and
optimizer state, compile counts, error messages, and predictions after checkpoints move
between 8 devices and 1.
"""

from __future__ import annotations

import json
import logging
import sys

import jax
import numpy as np
from flax import nnx

import easyfit as ef
from easyfit.data import on_device

EPOCHS, BATCH = 3, 40
COMPILES = []  # one entry per XLA compile of the train step


class _TrainCompiles(logging.Handler):
    def emit(self, record):
        if "Compiling jit(_train_chunk)" in record.getMessage():
            COMPILES.append(1)




class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, annotate: bool = False):
        init = nnx.initializers.lecun_normal()
        self.l1 = nnx.Linear(16, 64, rngs=rngs)
        self.l2 = nnx.Linear(64, 64, rngs=rngs, kernel_init=(
            nnx.with_partitioning(init, ("model", None)) if annotate else init))
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.out = nnx.Linear(64, 4, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.l2(nnx.relu(self.l1(x))))))


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    return x, (x[:, :4] @ rng.normal(size=(4, 4))).argmax(-1)


def model(distribution, module=None) -> ef.Model:
    m = ef.Model(module or Net(nnx.Rngs(0)), distribution=distribution)
    m.compile(ef.optimizers.adamw(1e-2), "sparse_categorical_crossentropy", ["accuracy"])
    return m


def specs(tree) -> dict[str, str]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): str(leaf.sharding.spec) for path, leaf in flat
            if hasattr(leaf, "sharding")}


def error(make) -> str:
    try:
        make()
    except (ValueError, TypeError) as e:
        return str(e)
    return ""


def main(out: str, checkpoints: str) -> None:
    jax.config.update("jax_log_compiles", True)
    logging.getLogger("jax._src.interpreters.pxla").addHandler(_TrainCompiles())
    logging.getLogger("jax._src.interpreters.pxla").propagate = False
    x, y = data()
    on_device.WIDE_ROW_BYTES = 0  # the arrays held on the devices, though their rows are narrow
    one = ef.distribute.DataParallel(devices=jax.devices()[:1])
    results = {"devices": len(jax.devices()), "runs": {}}
    strategies = {
        "one_device": lambda: model(one),
        "data_parallel": lambda: model(ef.distribute.DataParallel()),
        # built from a function: parameters are created sharded, never whole
        "fsdp": lambda: model(ef.distribute.FSDP(), lambda: Net(nnx.Rngs(0))),
        # l1 and out by rules, l2 by its nnx.with_partitioning annotation
        "model_parallel": lambda: model(ef.distribute.ModelParallel(
            {"data": 2, "model": 4}, rules={"l1/kernel": (None, "model"),
                                             "out/kernel": ("model", None)}),
            lambda: Net(nnx.Rngs(0), annotate=True)),
    }
    trained = {}
    for name, make in strategies.items():
        m = make()
        before = len(COMPILES)
        history = m.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0)
        compiled_first = len(COMPILES) - before
        before = len(COMPILES)
        m.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        results["runs"][name] = {
            "loss": history.history["loss"], "params": specs(m.trainer.state.params),
            "opt_state": specs(m.trainer.state.opt_state), "compiles_second_fit": len(COMPILES) - before,
            "compiles_first_fit": compiled_first,
            # as conftest.train_programs (not imported: this runs in a bare subprocess)
            "train_programs": max(1, len(m.trainer.dispatch.compiled_sizes)),  # "auto" may run two sizes
            "mesh": dict(m.distribution.mesh.shape), "summary": m.summary(print_fn=None)}
        trained[name] = m
    # The same data fed from the host: the arrays are held on the devices above (the step
    # gathers each batch's rows from them), and the two must train alike.
    limit, on_device.DEVICE_DATA_BYTES = on_device.DEVICE_DATA_BYTES, 0
    history = model(ef.distribute.DataParallel()).fit(x, y, batch_size=BATCH, epochs=EPOCHS,
                                                      verbose=0)
    results["runs"]["data_parallel_from_host"] = {"loss": history.history["loss"]}
    on_device.DEVICE_DATA_BYTES = limit
    results["errors"] = {
        "batch": error(lambda: model(ef.distribute.DataParallel()).fit(
            x, y, batch_size=36, verbose=0)),
        "mesh": error(lambda: ef.distribute.ModelParallel({"data": 3, "model": 2}).mesh),
        "rule": error(lambda: model(ef.distribute.ModelParallel(
            {"data": 2, "model": 4}, rules={"attention/kernel": (None, "model")})).fit(
            x, y, batch_size=BATCH, verbose=0)),
        "divisible": error(lambda: model(ef.distribute.ModelParallel(
            {"data": 2, "model": 4}, rules={"out/kernel": (None, ("data", "model"))})).fit(
            x, y, batch_size=BATCH, verbose=0)),
    }
    # Checkpoints move between device counts: 8 (FSDP) -> 1 and 1 -> 8 (FSDP).
    trained["fsdp"].save_weights(f"{checkpoints}/from8")
    on_one = model(one)
    on_one.load_weights(f"{checkpoints}/from8")
    trained["one_device"].save_weights(f"{checkpoints}/from1")
    on_eight = model(ef.distribute.FSDP(), lambda: Net(nnx.Rngs(5)))
    on_eight.load_weights(f"{checkpoints}/from1")
    results["reshard"] = {
        "8to1": float(np.abs(on_one.predict(x) - trained["fsdp"].predict(x)).max()),
        "1to8": float(np.abs(on_eight.predict(x) - trained["one_device"].predict(x)).max()),
        "8to1_equal_weights": all(np.array_equal(a, b) for a, b in zip(
            on_one.get_weights(), trained["fsdp"].get_weights())),
        "1to8_equal_weights": all(np.array_equal(a, b) for a, b in zip(
            on_eight.get_weights(), trained["one_device"].get_weights())),
        "1to8_params": specs(on_eight.trainer.eval_state()[0]),
    }
    with open(out, "w") as handle:
        json.dump(results, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
