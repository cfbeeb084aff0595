"""Training on several devices: data parallel, FSDP and model parallel with the same script.

Run:  python examples/multi_device.py --strategy fsdp
On a machine without accelerators it makes 8 CPU devices (XLA's host-platform device count),
so the sharding is real even on a laptop; with GPUs it uses them all. It prints the mesh and
each parameter's partition spec (model.summary()), trains an MLP on scikit-learn's digits and
prints the test accuracy.

Several hosts: start this script once per host with the same arguments plus
``--coordinator HOST:PORT --num-processes N --process-id I`` (or under SLURM with none of
them); every process passes the full dataset and the global batch size.
"""

from __future__ import annotations

import argparse
import os

parser = argparse.ArgumentParser(description="easyfit on several devices")
parser.add_argument("--strategy", choices=("dp", "fsdp", "mp"), default="fsdp")
parser.add_argument("--cpu-devices", type=int, default=8,
                    help="CPU devices to make when no accelerator is present")
parser.add_argument("--coordinator", help="host:port of process 0 (multi-host)")
parser.add_argument("--num-processes", type=int)
parser.add_argument("--process-id", type=int)
parser.add_argument("--epochs", type=int, default=20)
args = parser.parse_args()
# Before JAX starts: the CPU platform then has this many devices (GPUs are unaffected).
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.cpu_devices}")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import easyfit as ef  # noqa: E402

if args.coordinator or args.num_processes or "SLURM_JOB_ID" in os.environ:
    ef.distribute.initialize(args.coordinator, args.num_processes, args.process_id)


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(64, 512, rngs=rngs)
        self.mid = nnx.Linear(512, 512, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(512, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.mid(nnx.relu(self.hidden(x))))
        return self.out(self.dropout(x))


def distribution(name: str) -> ef.distribute.Distribution:
    if name == "dp":
        return ef.distribute.DataParallel()
    if name == "fsdp":
        return ef.distribute.FSDP()
    model_axis = 2 if len(jax.devices()) % 2 == 0 else 1
    return ef.distribute.ModelParallel(
        {"data": -1, "model": model_axis},
        # Megatron-style: split the first layer's outputs, the second layer's inputs.
        rules={"hidden/kernel": (None, "model"), "mid/kernel": ("model", None)})


digits = load_digits()
x = (digits.data / 16.0).astype(np.float32)
y = digits.target.astype(np.int32)
order = np.random.default_rng(0).permutation(len(x))
x, y = x[order], y[order]
x_train, y_train, x_test, y_test = x[:1440], y[:1440], x[1440:], y[1440:]

# A function that builds the module: its parameters are created directly in their sharding.
model = ef.Model(lambda: MLP(rngs=nnx.Rngs(0)), distribution=distribution(args.strategy))
model.compile(optimizer=ef.optimizers.adamw(1e-3), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"], steps_per_execution=4)
if ef.distribute.is_chief():
    model.summary()
model.fit(x_train, y_train, batch_size=64, epochs=args.epochs, verbose=0)  # global batch
result = model.evaluate(x_test, y_test, batch_size=64, verbose=0, return_dict=True)
if ef.distribute.is_chief():
    print(f"devices: {len(jax.devices())}, processes: {jax.process_count()}")
    print(f"test accuracy: {result['accuracy']:.4f}")
