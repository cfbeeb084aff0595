"""The on-disk form of a whole model, written by ``Model.save`` and read by
[`easyfit.saving.load_model`][easyfit.saving.load_model].

A saved model is a directory holding:

- ``easyfit_model.json``: what the model is, readable by a person: the format and its
  version, the module's class (for reference: the code itself is not stored), the path,
  shape and dtype of every weight, and the ``compile`` configuration;
- ``state/``: an orbax checkpoint (`easyfit.checkpoint.Checkpoints`) of the weights
  (parameters, batch statistics, RNG streams) and, once ``fit`` has run, of the optimizer
  state and the step counter.

The compile configuration stores each part by name and settings: an ``ef.optimizers``
optimizer (and its ``ef.schedules`` schedule) as the function that made it and its
arguments, an ``ef.losses`` / ``ef.metrics`` object as its class and attributes. What is
plain Python code (your own loss function, an ``optax`` transformation, an ``augment``
function) cannot be stored: the entry says so in a ``note`` and loading asks for it again
through ``custom_objects``.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import nnx

from easyfit import losses as losses_lib
from easyfit import metrics as metrics_lib
from easyfit import optimizers as optimizers_lib
from easyfit import outputs as outputs_lib
from easyfit import schedules as schedules_lib
from easyfit.checkpoint import Checkpoints, abstract
from easyfit.distribute.hosts import barrier
from easyfit.modules.graph import path_names
from easyfit.recipes import recipe_of
from easyfit.training.options import TrainingOptions

if TYPE_CHECKING:
    from easyfit.model import Model

__all__ = ["CONFIG_FILE", "FORMAT", "STATE_DIR", "VERSION", "compile_arguments",
           "compile_config", "read_config", "restore", "write"]

CONFIG_FILE = "easyfit_model.json"
STATE_DIR = "state"
FORMAT = "easyfit.model"
VERSION = 1

# Where stored names may point: nothing else is imported or called when loading.
_FACTORY_MODULES = {"easyfit.optimizers": optimizers_lib, "easyfit.schedules": schedules_lib}
_CLASS_MODULES = {"easyfit.losses": losses_lib, "easyfit.metrics": metrics_lib}
_LAYER_PACKAGES = ("flax.", "easyfit.")


# -- what the compile configuration looks like as JSON --------------------------------------
def _plain(value: Any) -> Any:
    """``value`` as JSON (recipes nested), or raises ``TypeError`` if it is code or data."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v) for k, v in value.items()}
    recipe = recipe_of(value)
    if recipe is not None:
        return {"recipe": {"factory": recipe["factory"], "args": _plain(recipe["args"])}}
    raise TypeError(type(value).__name__)


def _custom(name: str, what: str, role: str) -> dict[str, Any]:
    return {"name": name, "custom": role, "note": (
        f"Not stored: {what} is Python code. Pass it again when loading: "
        f"ef.load_model(path, module=..., custom_objects={{{name!r}: ...}}), or load with "
        "compile=False and call model.compile(...).")}


def _optimizer_entry(optimizer: optimizers_lib.Optimizer) -> dict[str, Any]:
    recipe = recipe_of(optimizer)
    if recipe is not None:
        args = dict(recipe["args"])
        if isinstance(args.get("learning_rate"), (int, float)):
            args["learning_rate"] = optimizer.learning_rate  # set before fit: the current one
        try:
            return {"name": optimizer.name, "factory": recipe["factory"], "args": _plain(args)}
        except TypeError as error:
            return _custom("optimizer", f"the optimizer {optimizer.name!r} (its argument of "
                           f"type {error} cannot be stored)", "optimizer")
    return _custom("optimizer", f"the optimizer ({optimizer.name})", "optimizer")


def _object_entry(obj: Any, role: str) -> dict[str, Any]:
    """An ``ef.losses`` / ``ef.metrics`` object as class + attributes; else a note."""
    cls = type(obj)
    name = getattr(obj, "name", None) or getattr(obj, "__name__", None) or cls.__name__
    if cls.__module__ in _CLASS_MODULES and not cls.__name__.startswith("_"):
        try:
            return {"name": name, "class": f"{cls.__module__}.{cls.__name__}",
                    "attributes": _plain(vars(obj))}
        except TypeError:
            pass
    kind = "function" if callable(obj) and not hasattr(obj, "values") else cls.__name__
    return _custom(name, f"the {role} {name!r} (a {kind})", role)


def _given(value: Any, role: str) -> Any:
    """A per-output argument as given (names, lists, dicts of losses or metrics) as JSON:
    each object is ``{"object": entry}``, each dict ``{"dict": {...}}``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_given(v, role) for v in value]
    if isinstance(value, dict):
        return {"dict": {k: _given(v, role) for k, v in value.items()}}
    return {"object": _object_entry(value, role)}


def _loss_config(loss: Any) -> dict[str, Any]:
    """The loss; with ``loss_weights``, its weight; for several outputs, the per-output
    losses, weights and metrics as ``compile`` was given them."""
    if isinstance(loss, outputs_lib.OutputsSpec):
        return {"loss": None, "outputs": {
            "loss": _given(loss.loss, "loss"), "loss_weights": _plain(loss.loss_weights),
            "metrics": _given(loss.metrics, "metric"),
            "weighted_metrics": _given(loss.weighted_metrics, "metric")}}
    if hasattr(loss, "loss_fn") and isinstance(getattr(loss, "weight", None), float):
        return {"loss": _object_entry(loss.loss_fn, "loss"), "loss_weights": loss.weight}
    return {"loss": _object_entry(loss, "loss")}


def compile_config(options: TrainingOptions) -> dict[str, Any]:
    """``compile``'s settings as JSON (see the module's description)."""
    layers = [f"{t.__module__}.{t.__qualname__}" for t in options.float32_layers]
    augment = options.augment
    return {
        "optimizer": _optimizer_entry(options.optimizer),
        **_loss_config(options.loss),
        "metrics": [_object_entry(m, "metric") for m in options.metrics],
        "weighted_metrics": [_object_entry(m, "metric") for m in options.weighted_metrics],
        "steps_per_execution": options.steps_per_execution, "seed": options.seed,
        "precision": options.precision, "float32_layers": layers,
        "gradient_accumulation_steps": options.accumulation_steps, "remat": options.remat,
        "ema_momentum": None if options.ema in (None, options.optimizer.ema)  # compile's own
        else options.ema.momentum,
        "augment": None if augment is None else _custom(
            getattr(augment, "__name__", "augment"), "the augment function", "augment"),
    }


# -- and back ------------------------------------------------------------------------------
def _made(value: Any) -> Any:
    """Inverse of `_plain`: recipes are called (only ``ef.optimizers`` / ``ef.schedules``
    functions)."""
    if isinstance(value, list):
        return [_made(v) for v in value]
    if isinstance(value, dict) and set(value) == {"recipe"}:
        return _call_factory(value["recipe"]["factory"], value["recipe"]["args"])
    if isinstance(value, dict):
        return {k: _made(v) for k, v in value.items()}
    return value


def _call_factory(factory: str, args: dict[str, Any]) -> Any:
    module_name, _, name = factory.rpartition(".")
    module = _FACTORY_MODULES.get(module_name)
    if module is None or name not in module.__all__:
        raise ValueError(f"The saved model names an unknown factory {factory!r}.")
    return getattr(module, name)(**_made(args))


def _object(entry: dict[str, Any]) -> Any:
    module_name, _, name = entry["class"].rpartition(".")
    module = _CLASS_MODULES.get(module_name)
    if module is None or name not in module.__all__:
        raise ValueError(f"The saved model names an unknown class {entry['class']!r}.")
    cls = getattr(module, name)
    obj = cls.__new__(cls)
    vars(obj).update(entry["attributes"])
    return obj


def _layer_type(name: str) -> type | None:
    if not name.startswith(_LAYER_PACKAGES):
        return None
    parts = name.split(".")
    for cut in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part, None)
        return found if isinstance(found, type) else None
    return None


def compile_arguments(config: dict[str, Any], custom_objects: dict[str, Any] | None,
                      path: str) -> dict[str, Any]:
    """``model.compile``'s keyword arguments from a stored configuration; the parts that are
    code come from ``custom_objects`` (by their name, or by role: ``"optimizer"``,
    ``"loss"``, ``"augment"``, ``"float32_layers"``). One ``ValueError`` lists every part
    missing."""
    custom = dict(custom_objects or {})
    missing: list[str] = []

    def resolve(entry: dict[str, Any] | None, make: Any) -> Any:
        if entry is None:
            return None
        if "custom" not in entry:
            return make(entry)
        for key in (entry["name"], entry["custom"]):
            if key in custom:
                return custom[key]
        missing.append(f"{entry['custom']} {entry['name']!r}")
        return None

    def metric(entry: dict[str, Any]) -> Any:
        found = resolve(entry, _object)
        if found is not None and not isinstance(found, metrics_lib.Metric) and callable(found):
            return metrics_lib.Mean(found, name=entry["name"])  # keeps the saved log name
        return found

    def given(value: Any, make: Any) -> Any:
        if isinstance(value, list):
            return [given(v, make) for v in value]
        if isinstance(value, dict) and "dict" in value:
            return {k: given(v, make) for k, v in value["dict"].items()}
        return resolve(value["object"], make) if isinstance(value, dict) else value

    layers = [_layer_type(name) for name in config["float32_layers"]]
    if None in layers:
        layers = resolve(_custom("float32_layers", "a float32_layers type outside flax",
                                 "float32_layers"), None) or ()
    arguments = {
        "optimizer": resolve(config["optimizer"],
                             lambda e: _call_factory(e["factory"], e["args"])),
        "loss": resolve(config["loss"], _object),
        "metrics": [metric(e) for e in config["metrics"]],
        "weighted_metrics": [metric(e) for e in config["weighted_metrics"]],
        "steps_per_execution": config["steps_per_execution"], "seed": config["seed"],
        "augment": resolve(config["augment"], None), "precision": config["precision"],
        "float32_layers": tuple(layers),
        "gradient_accumulation_steps": config["gradient_accumulation_steps"],
        "remat": config["remat"], "ema_momentum": config.get("ema_momentum"),
        "loss_weights": config.get("loss_weights"),
    }
    if config.get("outputs"):  # several outputs: compile's per-output arguments as given
        out = config["outputs"]
        arguments.update(loss=given(out["loss"], _object), loss_weights=out["loss_weights"],
                         metrics=given(out["metrics"], _object),
                         weighted_metrics=given(out["weighted_metrics"], _object))
    if missing:
        names = ", ".join(missing)
        raise ValueError(
            f"The model saved in {path} was compiled with Python code that is not stored: "
            f"{names}. Pass it again: ef.load_model(path, module=..., custom_objects="
            f"{{name: object, ...}}) with these names, or load with compile=False and call "
            "model.compile(...) yourself (training then starts a new optimizer state).")
    return arguments


# -- the weights' description ---------------------------------------------------------------
def _weight_specs(weights: Any) -> dict[str, dict[str, Any]]:
    flat = jax.tree_util.tree_flatten_with_path(weights)[0]
    return {"/".join(path_names(path)): {"shape": list(np.shape(leaf)),
                                         "dtype": str(leaf.dtype)} for path, leaf in flat}


def _check_structure(saved: dict[str, Any], weights: Any, path: str) -> None:
    have = _weight_specs(weights)
    problems = [f"{name}: saved {spec['shape']} {spec['dtype']}, module "
                + (f"{have[name]['shape']} {have[name]['dtype']}" if name in have else "has none")
                for name, spec in saved.items() if have.get(name) != spec]
    problems += [f"{name}: in the module, not in the saved model" for name in have
                 if name not in saved]
    if problems:
        raise ValueError(
            f"module= does not match the model saved in {path}:\n  "
            + "\n  ".join(problems[:8]) + ("\n  ..." if len(problems) > 8 else "")
            + "\nBuild the module with the same code and sizes as the one that was saved.")


# -- writing and reading --------------------------------------------------------------------
def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``easyfit_model.json`` of a saved model; ``FileNotFoundError`` if there is none,
    ``ValueError`` if ``path`` is something else."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No saved model at {path!r} (the path does not exist). Pass "
                                "the directory that model.save(path) wrote.")
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise ValueError(f"{path!r} is not a model saved by easyfit's model.save (it has no "
                         f"{CONFIG_FILE}). For weights only, use model.load_weights(path).")
    with open(file) as handle:
        config = json.load(handle)
    if config.get("format") != FORMAT or config.get("version", 0) > VERSION:
        raise ValueError(f"{file} is format {config.get('format')!r} version "
                         f"{config.get('version')}; this easyfit reads {FORMAT!r} up to "
                         f"version {VERSION}. Upgrade easyfit to load it.")
    return config


def _check_target(path: str, overwrite: bool) -> None:
    if not os.path.exists(path):
        return
    ours = os.path.isfile(os.path.join(path, CONFIG_FILE))
    if not ours and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(f"{path!r} exists and is not a model saved by easyfit; "
                              "model.save never replaces it. Choose another path, or delete "
                              "it first.")
    if ours and not overwrite:
        raise FileExistsError(f"A saved model exists at {path!r}; pass overwrite=True to "
                              "replace it.")


def write(model: "Model", path: str | os.PathLike, overwrite: bool = True) -> None:
    """Writes ``model`` to the directory ``path`` (see the module's description), through a
    temporary directory beside it, so a failed save leaves the old one whole."""
    trainer = model.trainer
    if not trainer.has_module:
        raise RuntimeError("This Linen model is not initialised yet, so there is nothing to "
                           "save: pass sample_input= to ef.Model, or call fit/predict first.")
    path = os.path.abspath(os.fspath(path))
    _check_target(path, overwrite)
    module = trainer.module
    weights = trainer.weights()
    state = trainer.state if model.compiled else None
    train = None if state is None else {"opt_state": state.opt_state, "step": state.step}
    config = {
        "format": FORMAT, "version": VERSION,
        "module": f"{type(module).__module__}.{type(module).__qualname__}",
        "weights": _weight_specs(weights),
        "compile": compile_config(trainer.options) if model.compiled else None,
        "training": None if train is None else {"step_count": trainer.step_count,
                                                "total_steps": trainer.total_steps},
    }
    partial = path + ".easyfit-partial"
    if jax.process_index() == 0:
        shutil.rmtree(partial, ignore_errors=True)  # a save that failed before
    barrier("easyfit-save-begin")  # no process writes its shards into what is removed
    store = Checkpoints(os.path.join(partial, STATE_DIR), keep_latest=1, async_save=False)
    store.save(trainer.step_count, weights, {"epoch": trainer.position[0]}, train)
    store.close()
    if jax.process_index() == 0:
        with open(os.path.join(partial, CONFIG_FILE), "w") as handle:
            json.dump(config, handle, indent=1)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(partial, path)
    barrier("easyfit-save-end")  # every process returns once the model is at ``path``


def restore(model: "Model", path: str | os.PathLike, config: dict[str, Any], compile: bool,
            custom_objects: dict[str, Any] | None) -> None:
    """Puts a saved model's weights into ``model`` (built from the same module code) and,
    with ``compile``, compiles it as it was, its next ``fit`` continuing the saved training."""
    path = os.path.abspath(os.fspath(path))
    trainer = model.trainer
    weights = trainer.weights()
    _check_structure(config["weights"], weights, path)
    arguments = None
    if compile and config["compile"] is not None:
        arguments = compile_arguments(config["compile"], custom_objects, path)
    training = config["training"] if arguments is not None else None
    train_target = None
    if training is not None:
        model.compile(**arguments)
        options = trainer.options
        transform = options.optimizer.build(training["total_steps"], options.accumulation_steps,
                                            loss_scaling=options.precision == "float16",
                                            ema=options.ema)
        options.optimizer.reset()  # fit builds it again, for the same total_steps
        one = trainer.distribution.replicated_sharding()
        shapes = jax.eval_shape(transform.init, weights["params"])
        train_target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                                                    sharding=one),
                                    {"opt_state": shapes, "step": np.zeros((), np.int32)})
    store = Checkpoints(os.path.join(path, STATE_DIR), keep_latest=1, async_save=False)
    try:
        restored = store.restore(abstract(weights), train_target)
    finally:
        store.close()
    if restored is None:
        raise FileNotFoundError(f"The saved model at {path!r} has no state/ checkpoint; it is "
                                "incomplete. Save the model again.")
    _, saved_weights, train, _ = restored
    nnx.update(trainer.module, saved_weights["params"], saved_weights["rest"])
    if arguments is not None and training is None:
        model.compile(**arguments)
    if training is not None:
        trainer.continue_training(train["opt_state"], train["step"], training["step_count"],
                                  training["total_steps"])
