"""Write a model's inference function for serving: ``model.export(path)``.

The function is the model in eval mode (dropout off, BatchNorm on its running statistics,
the compiled precision), as ``model.predict`` runs it, lowered with `jax.export`
with a symbolic batch dimension. [`easyfit.export.load_exported`][easyfit.export.load_exported]
runs it in a process
that has neither the model's code nor Flax modules nor easyfit's training code; the files
are described in [`easyfit.export`][easyfit.export].
"""

from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING, Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from easyfit import errors
from easyfit import export as export_lib
from easyfit.precision import cast_floating

if TYPE_CHECKING:
    from easyfit.model import Model

__all__ = ["export_model"]


def _spec(avals: Any, tree: Any) -> Any:
    """Shapes (the symbolic batch as ``"batch"``) and dtypes of a pytree of avals, as JSON."""
    def one(aval: Any) -> dict[str, Any]:
        return {"shape": [d if isinstance(d, int) else str(d) for d in aval.shape],
                "dtype": str(aval.dtype)}
    return jax.tree.unflatten(tree, [one(a) for a in avals])


def _check_target(path: str, overwrite: bool) -> None:
    if not os.path.exists(path):
        return
    ours = os.path.isfile(os.path.join(path, export_lib.EXPORT_FILE))
    if not ours and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(f"{path!r} exists and is not an easyfit export; model.export "
                              "never replaces it. Choose another path, or delete it first.")
    if ours and not overwrite:
        raise FileExistsError(f"An export exists at {path!r}; pass overwrite=True to "
                              "replace it.")


def export_model(model: "Model", path: str | os.PathLike, sample_input: Any,
                 platforms: Sequence[str] | None = None, polymorphic_batch: bool = True,
                 overwrite: bool = True) -> Any:
    """Writes ``model``'s inference function and weights to the directory ``path``.

    Args:
        model: the model (compiled or not).
        path: a directory, created if missing (see [`easyfit.export`][easyfit.export] for its
            files).
        sample_input: an input batch (array or pytree of arrays, e.g. ``x_test[:1]``): its
            shapes and dtypes, the first dimension being the batch.
        platforms: where the export may run (``"cpu"``, ``"cuda"``, ``"rocm"``, ``"tpu"``);
            default: this machine's backend.
        polymorphic_batch: export the batch dimension as a symbol, so any batch size runs;
            ``False``: only ``sample_input``'s batch size.
        overwrite: replace an export at ``path`` (never anything else).

    Returns:
        The ``jax.export.Exported``.
    """
    if sample_input is None:
        raise ValueError("model.export needs sample_input=: an input batch such as "
                         "x_test[:1], whose shapes (after the batch dimension) and dtypes "
                         "the exported function takes.")
    trainer = model.trainer
    trainer.ensure_module(sample_input=sample_input)
    path = os.path.abspath(os.fspath(path))
    _check_target(path, overwrite)
    graphdef = trainer.steps.graphs.eval  # dropout off, BatchNorm frozen, compiled precision
    compute_dtype = trainer.steps.compute_dtype
    weights = jax.device_get(trainer.weights())
    leaves, treedef = jax.tree.flatten(weights)
    is_key = [jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) for leaf in leaves]
    impls = {i: str(jax.random.key_impl(leaf)) for i, leaf in enumerate(leaves) if is_key[i]}
    stored = [np.asarray(jax.random.key_data(leaf)) if is_key[i] else np.asarray(leaf)
              for i, leaf in enumerate(leaves)]

    def serve(flat: list[Any], x: Any) -> Any:
        flat = [jax.random.wrap_key_data(a, impl=impls[i]) if i in impls else a
                for i, a in enumerate(flat)]
        tree = jax.tree.unflatten(treedef, flat)
        module = nnx.merge(graphdef, tree["params"], tree["rest"], copy=True)
        with errors.explained("module", x=x, module=module):
            y = module(cast_floating(x, compute_dtype))
        return y if compute_dtype is None else cast_floating(y, jnp.float32)

    x_leaves, x_tree = jax.tree.flatten(sample_input)
    if any(np.ndim(leaf) == 0 for leaf in x_leaves):
        raise ValueError("sample_input= must be a batch: every array needs a first (batch) "
                         "dimension, e.g. x_test[:1].")
    (batch,) = jax.export.symbolic_shape("batch") if polymorphic_batch else (None,)
    x_spec = jax.tree.unflatten(x_tree, [jax.ShapeDtypeStruct(
        ((batch if polymorphic_batch else np.shape(leaf)[0]),) + tuple(np.shape(leaf)[1:]),
        np.asarray(leaf).dtype) for leaf in x_leaves])
    w_spec = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in stored]
    exported = jax.export.export(jax.jit(serve), platforms=platforms)(w_spec, x_spec)
    config = {
        "format": export_lib.EXPORT_FORMAT, "version": export_lib.EXPORT_VERSION,
        "module": f"{type(trainer.module).__module__}.{type(trainer.module).__qualname__}",
        "platforms": list(exported.platforms),
        "inputs": _spec(exported.in_avals[len(stored):], x_tree),
        "outputs": _spec(exported.out_avals, exported.out_tree),
    }
    partial = path + ".easyfit-partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    with open(os.path.join(partial, export_lib.FUNCTION_FILE), "wb") as handle:
        handle.write(exported.serialize())
    np.savez(os.path.join(partial, export_lib.WEIGHTS_FILE),
             **{str(i): a for i, a in enumerate(stored)})
    with open(os.path.join(partial, export_lib.EXPORT_FILE), "w") as handle:
        json.dump(config, handle, indent=1)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(partial, path)
    return exported
