"""Checkpoints with orbax: atomic, async saves; LatestN + BestN retention; safe restores.

One checkpoint step holds up to three items:

- ``weights``: module parameters and other variables (batch stats, RNG streams);
- ``train``: optimizer state, step counter, metric sums of the running epoch;
- ``meta``: JSON: epoch, batch in epoch, History, callback states, the monitored value.

Orbax writes each step into a temporary directory and renames it when complete, so a
crash leaves either a whole step or none. A step that still fails to restore (a damaged
file) is reported with a warning naming it and the previous good step is used.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from typing import Any

import jax
import numpy as np

from easyfit.modules.graph import path_names

__all__ = ["CheckpointError", "Checkpoints", "ITEMS", "abstract", "check_load_path", "join_arrays",
           "split_arrays"]


def _orbax() -> Any:
    """orbax-checkpoint, imported on first use (it costs ~25 MB and a second to import)."""
    import orbax.checkpoint as ocp

    return ocp

ITEMS = ("weights", "train", "meta", "arrays")


def split_arrays(obj: Any, arrays: dict[str, Any]) -> Any:
    """JSON-able copy of ``obj``: each numpy/JAX array moves to ``arrays`` under a key."""
    if isinstance(obj, dict):
        return {key: split_arrays(value, arrays) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [split_arrays(value, arrays) for value in obj]
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        key = str(len(arrays))
        arrays[key] = obj
        return {"__array__": key}
    return obj


def join_arrays(obj: Any, arrays: dict[str, Any]) -> Any:
    """Inverse of `split_arrays`."""
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return np.asarray(arrays[obj["__array__"]])
        return {key: join_arrays(value, arrays) for key, value in obj.items()}
    if isinstance(obj, list):
        return [join_arrays(value, arrays) for value in obj]
    return obj


def abstract(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a pytree of arrays: the target of a restore."""
    return jax.tree.map(_orbax().utils.to_shape_dtype_struct, tree)


def _rank(metrics: dict[str, float]) -> float:
    """Orbax's ordering key: smaller is better; a step saved without a metric is last."""
    return metrics.get("rank", math.inf)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or does not fit the model."""


def _paths_and_shapes(tree: Any) -> dict[str, tuple]:
    """``{"params/dense/kernel": shape}``: paths of ``nnx.State`` and of restored dicts agree."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = {}
    for path, leaf in flat:
        out["/".join(path_names(path))] = tuple(getattr(leaf, "shape", ()))
    return out


class Checkpoints:
    """A directory of checkpoint steps managed by an orbax ``CheckpointManager``.

    Args:
        directory: where steps are written (created if missing; removed again by
            `close` if no step was saved there, so a failed run leaves nothing).
        keep_latest: newest steps kept (at least 1: the newest is never deleted).
        keep_best: best steps kept by ``metric`` (``None``: no best-based retention).
        mode: ``"min"`` or ``"max"``: which metric values are best; given (or with
            ``keep_best``), the store ranks its steps by the metric saved with each.
        async_save: return from ``save`` once arrays are copied to host; write in the
            background.

    Examples:
        >>> store = Checkpoints("runs/ckpt", keep_latest=1, keep_best=3, mode="min")  # doctest: +SKIP
    """

    def __init__(self, directory: str | os.PathLike, *, keep_latest: int = 1,
                 keep_best: int | None = None, mode: str | None = None,
                 async_save: bool = True):
        self.directory = os.path.abspath(os.fspath(directory))
        # a store given a mode (or keep_best) ranks its steps by the metric saved with them
        self.mode, self.ranks = mode or "min", bool(keep_best) or mode is not None
        ocp = _orbax()
        from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

        keep = [policies.LatestN(max(1, keep_latest))]
        if keep_best:  # "rank" is the metric signed so that smaller is better, whatever the mode
            keep.append(policies.BestN(get_metric_fn=_rank,
                                       reverse=True, n=keep_best,
                                       keep_checkpoints_without_metrics=False))
        # the outermost directory this store creates: removed again if it saves nothing, so a
        # fit that fails before its first save leaves no empty checkpoint directory behind
        self.created: str | None = None
        parent = self.directory
        while not os.path.exists(parent) and os.path.dirname(parent) != parent:
            self.created, parent = parent, os.path.dirname(parent)
        try:
            os.makedirs(self.directory, exist_ok=True)
            probe = os.path.join(self.directory, f".easyfit-write-test-{jax.process_index()}")
            with open(probe, "w") as handle:
                handle.write("ok")
            os.remove(probe)
        except OSError as error:
            fix = ("it is a file: checkpoints are directories, so pass a directory path"
                   if os.path.isfile(self.directory) else
                   "choose a writable directory with free space")
            raise CheckpointError(f"Cannot write checkpoints to {self.directory}: {error}. "
                                  f"{fix[0].upper()}{fix[1:]}.") from error
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                # best_fn makes orbax write each step's metrics to disk, so a later run (or
                # load_weights) still knows which steps are best.
                best_fn=_rank if self.ranks else None, best_mode="min",
                preservation_policy=policies.AnyPreservationPolicy(keep),
                enable_async_checkpointing=async_save, create=True),
            # Registered up front so a fresh manager can read the metadata of old steps.
            item_handlers={"weights": ocp.StandardCheckpointHandler(),
                           "train": ocp.StandardCheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler(),
                           "arrays": ocp.StandardCheckpointHandler()})

    # -- writing ----------------------------------------------------------------------------
    def save(self, step: int, weights: Any, meta: dict[str, Any], train: Any = None,
             metric: float | None = None) -> None:
        """Writes one step (async by default); ``metric`` ranks it for ``keep_best``.

        Arrays inside ``meta`` (e.g. a callback's saved weights) are stored as arrays.
        """
        ocp = _orbax()
        arrays: dict[str, Any] = {}
        meta = split_arrays(meta, arrays)
        items = {"weights": ocp.args.StandardSave(weights), "meta": ocp.args.JsonSave(meta)}
        if train is not None:
            items["train"] = ocp.args.StandardSave(train)
        if arrays:
            items["arrays"] = ocp.args.StandardSave(arrays)
        if step in self.manager.all_steps():  # e.g. a rerun after a resume: the newer wins
            self.manager.delete(step)
        try:
            # a store that ranks its steps takes {} for a step without a metric (orbax warns
            # on None); one that does not rank takes no metrics
            metrics = ({} if self.ranks else None) if metric is None else {
                "monitor": float(metric), "rank": float(metric if self.mode == "min" else -metric)}
            self.manager.save(step, args=ocp.args.Composite(**items), force=True, metrics=metrics)
        except OSError as error:
            raise CheckpointError(f"Saving checkpoint step {step} to {self.directory} failed: "
                                  f"{error}. Earlier checkpoints are untouched.") from error

    def wait(self) -> None:
        """Blocks until background writes are committed."""
        self.manager.wait_until_finished()

    # -- reading ----------------------------------------------------------------------------
    def steps(self) -> list[int]:
        """Committed steps, oldest first."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The step with the best saved metric (whatever mode it was saved with), else the
        latest."""
        ranked = []
        for step in self.steps():
            metrics = self.manager.metrics(step) or {}
            if "rank" in metrics:
                ranked.append((metrics["rank"], step))
        if ranked:
            return min(ranked)[1]
        return self.manager.latest_step()

    def restore(self, weights: Any, train: Any = None, step: int | None = None
                ) -> tuple[int, Any, Any, dict[str, Any]] | None:
        """Restores ``(step, weights, train, meta)`` into the given abstract targets.

        Tries ``step`` (default: the latest) and, if that step is damaged, each older step in
        turn, warning about every one skipped. Returns ``None`` when there is no checkpoint.
        Raises `CheckpointError` when a checkpoint belongs to a different model.
        """
        ocp = _orbax()
        candidates = self.steps()
        if step is not None:
            if step not in candidates:
                raise CheckpointError(f"No checkpoint step {step} in {self.directory}; "
                                      f"steps there: {candidates}.")
            candidates = [s for s in candidates if s <= step]
        for candidate in reversed(candidates):
            self._check_fits(candidate, weights)
            items = {"weights": ocp.args.StandardRestore(weights),
                     "meta": ocp.args.JsonRestore()}
            if train is not None:
                items["train"] = ocp.args.StandardRestore(train)
            try:
                restored = self.manager.restore(candidate, args=ocp.args.Composite(**items))
                meta = restored.meta
                if not isinstance(meta, dict) or "epoch" not in meta:
                    raise ValueError("its metadata is incomplete")
                if "__array__" in json.dumps(meta):
                    arrays = self.manager.restore(candidate, args=ocp.args.Composite(
                        arrays=ocp.args.StandardRestore())).arrays
                    meta = join_arrays(meta, arrays)
            except Exception as error:  # noqa: BLE001 -- any damage: fall back to older steps
                last_error = f"{type(error).__name__}: {str(error)[:200]}"
                warnings.warn(f"Checkpoint step {candidate} in {self.directory} is damaged "
                              f"({type(error).__name__}: {str(error)[:200]}); using the "
                              "previous one.", stacklevel=2)
                continue
            return candidate, restored.weights, restored.get("train"), meta
        if candidates:
            raise CheckpointError(
                f"Every checkpoint in {self.directory} is damaged (steps {candidates}; the "
                f"last error: {last_error}). Nothing was changed there. To start afresh, move "
                f"that directory aside or use another one; to survive this next time, keep "
                f"two (ModelCheckpoint(keep_latest=2), "
                f"BackupAndRestore(double_checkpoint=True)).")
        return None

    def _check_fits(self, step: int, weights: Any) -> None:
        """Refuses a checkpoint of another model, naming the first mismatching parameters."""
        try:
            stored = self.manager.item_metadata(step)["weights"]
        except Exception:  # noqa: BLE001 -- unreadable metadata: restore() reports the damage
            return
        stored = getattr(stored, "tree", stored)
        if stored is None:
            return
        want, have = _paths_and_shapes(weights), _paths_and_shapes(stored)
        problems = [f"{path}: checkpoint {have.get(path, 'missing')}, model {shape}"
                    for path, shape in want.items() if have.get(path) != shape]
        problems += [f"{path}: in the checkpoint, not in the model" for path in have
                     if path not in want]
        if problems:
            raise CheckpointError(
                f"The checkpoint in {self.directory} (step {step}) does not fit this model:\n  "
                + "\n  ".join(problems[:5]) + ("\n  ..." if len(problems) > 5 else "")
                + "\nBuild the model with the same code and sizes as the one that saved it.")

    def delete(self, step: int) -> None:
        """Removes one step (e.g. to overwrite it)."""
        if step in self.steps():
            self.manager.delete(step)

    def close(self) -> None:
        """Waits for background writes, then releases the manager."""
        try:
            self.manager.wait_until_finished()
            unused = self.created is not None and not self.manager.all_steps()
            self.manager.close()
            if unused:
                shutil.rmtree(self.created, ignore_errors=True)
        except OSError as error:
            try:
                self.manager.close()
            except OSError:
                pass  # the same stored failure, re-raised by orbax: reported once, below
            raise CheckpointError(f"Writing a checkpoint to {self.directory} failed: {error}. "
                                  "Earlier checkpoints are untouched.") from error


def check_load_path(path: Any, what: str) -> None:
    """A directory to read from exists (so reading creates nothing).

    Args:
        path: the directory.
        what: the call, for the message (``"load_weights"``).

    Raises:
        TypeError: not a path. FileNotFoundError: missing, or a file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} takes a directory path (str or os.PathLike); got "
                        f"{type(path).__name__}.")
    if not os.path.isdir(path):
        state = "is a file, not a directory" if os.path.exists(path) else "does not exist"
        raise FileNotFoundError(f"{what}: {os.fspath(path)!r} {state}. Pass the directory "
                                f"that save_weights, ModelCheckpoint or BackupAndRestore wrote.")
