"""Where arrays live: a device mesh, and how parameters and batches are laid out on it.

Sharding is a property of arrays, not of code: the same jitted step runs on one CPU, eight
GPUs or many hosts; only the placement of the training state and of each chunk changes.
Every strategy puts the batch axis on the mesh axis ``"data"``; they differ in where the
parameters (and with them the optimizer state) live:

- [`DataParallel`][easyfit.distribute.strategies.DataParallel] (the default): parameters
replicated on every device.
- [`FSDP`][easyfit.distribute.strategies.FSDP]: each parameter split over ``"data"`` along its
largest divisible dimension.
- [`ModelParallel`][easyfit.distribute.strategies.ModelParallel]: a ``{"data": d, "model": m}``
mesh; parameters placed by regex
  rules on their paths, or by ``nnx.with_partitioning`` metadata.

Nothing here touches a device until a model first needs the mesh, so
``ef.distribute.initialize()`` may follow ``import easyfit``.

Examples:
    >>> dist = FSDP()                          # doctest: +SKIP
    >>> model = ef.Model(net, distribution=dist)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from easyfit.modules.graph import GRAPH, path_names

__all__ = ["DATA", "DataParallel", "Distribution", "FSDP", "ModelParallel", "Spec", "flatten",
           "put"]

DATA = "data"

Spec = Sequence[str | Sequence[str] | None]
"""A partition spec as a tuple: one mesh axis name (or a tuple of them, or None) per dim."""


def flatten(tree: Any) -> tuple[list[tuple[tuple[str, ...], Any]], Any]:
    """``([(names, leaf)], treedef)`` with ``nnx.Variable``s as leaves (not their values)."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(
        tree, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return [(path_names(path), leaf) for path, leaf in flat], treedef


def _shape(leaf: Any) -> tuple[int, ...]:
    value = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
    return tuple(getattr(value, "shape", np.shape(value)))


def _metadata_spec(leaf: Any) -> Spec | None:
    """The ``nnx.with_partitioning`` annotation of a Variable, if any."""
    if not isinstance(leaf, nnx.Variable):
        return None
    metadata = leaf.get_metadata()
    return metadata.get("out_sharding") or metadata.get("sharding_names")


def _axes(entry: Any) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def put(value: Any, sharding: NamedSharding) -> jax.Array:
    """``jax.device_put`` that also works when the mesh spans several processes.

    A value that is not yet a global array must be the same on every process (the same
    seed built it); each process then places its own devices' part of it.
    """
    if sharding.is_fully_addressable:
        return jax.device_put(value, sharding)
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        if value.sharding == sharding:
            return value
        return jax.jit(lambda a: a, out_shardings=sharding)(value)
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        data = put(jax.random.key_data(value), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


class Distribution:
    """Base class: a mesh with a ``"data"`` axis; subclasses say where parameters live.

    Args:
        mesh_shape: axis name -> size; one size may be ``-1`` (all remaining devices).
        devices: devices to use (default: every device of every process).
    """

    def __init__(self, mesh_shape: Mapping[str, int] | None = None,
                 devices: Sequence[Any] | None = None):
        self.mesh_shape = dict(mesh_shape or {DATA: -1})
        if DATA not in self.mesh_shape:
            raise ValueError(f"mesh_shape {self.mesh_shape} has no 'data' axis; batches are "
                             "split over it. Add 'data': 1 if the batch is not to be split.")
        self._devices = None if devices is None else list(devices)
        self._mesh: Mesh | None = None

    # -- the mesh ---------------------------------------------------------------------------
    @property
    def mesh(self) -> Mesh:
        """The device mesh (built on first use)."""
        if self._mesh is None:
            devices = self._devices or jax.devices()
            names, sizes = list(self.mesh_shape), list(self.mesh_shape.values())
            if sizes.count(-1) > 1:
                raise ValueError(f"mesh_shape {self.mesh_shape}: at most one axis may be -1.")
            known = math.prod(s for s in sizes if s != -1)
            if -1 in sizes and known and len(devices) % known == 0:
                sizes[sizes.index(-1)] = len(devices) // known
            if math.prod(sizes) != len(devices) or min(sizes) < 1:
                raise ValueError(
                    f"mesh_shape {self.mesh_shape} needs {math.prod(sizes)} devices, but "
                    f"{len(devices)} are available. Use sizes whose product is {len(devices)} "
                    f"(e.g. {{'data': {len(devices)}}}), or -1 for one axis to take the rest.")
            if self._devices is None:
                self._mesh = jax.make_mesh(tuple(sizes), tuple(names),
                                           axis_types=(AxisType.Auto,) * len(names))
            else:
                self._mesh = Mesh(np.asarray(devices).reshape(sizes), tuple(names),
                                  axis_types=(AxisType.Auto,) * len(names))
        return self._mesh

    @property
    def num_replicas(self) -> int:
        """How many ways each batch is split (the size of the ``"data"`` axis)."""
        return self.mesh.shape[DATA]

    def check_batch_size(self, batch_size: int) -> None:
        """Refuses a batch that does not split evenly over the ``"data"`` axis."""
        n = self.num_replicas
        if batch_size % n:
            raise ValueError(f"batch_size={batch_size} does not split over the {n} devices of "
                             f"the 'data' axis; use a multiple of {n} (e.g. "
                             f"{max(n, batch_size // n * n)} or {(batch_size // n + 1) * n}).")

    # -- parameters -------------------------------------------------------------------------
    def param_spec(self, name: str, shape: tuple[int, ...], annotation: Spec | None) -> Spec:
        """The partition spec of one parameter (``name`` like ``"layers/0/kernel"``)."""
        return tuple(annotation) if annotation else ()

    def param_shardings(self, params: Any) -> Any:
        """``NamedSharding`` for every leaf of a parameter pytree, checked against its shape."""
        flat, treedef = flatten(params)
        shardings = []
        for names, leaf in flat:
            name, shape = "/".join(names), _shape(leaf)
            spec = tuple(self.param_spec(name, shape, _metadata_spec(leaf)))
            self._check_spec(name, shape, spec)
            shardings.append(NamedSharding(self.mesh, P(*spec)))
        self._check_rules_used(params)
        return jax.tree.unflatten(treedef, shardings)

    def _check_rules_used(self, params: Any) -> None:
        """Subclasses with rules refuse a rule that matches no parameter."""

    def _check_spec(self, name: str, shape: tuple[int, ...], spec: Spec) -> None:
        if len(spec) > len(shape):
            raise ValueError(f"Parameter '{name}' of shape {shape} has {len(shape)} dimensions, "
                             f"but its partition spec {tuple(spec)} names {len(spec)}.")
        for dim, entry in enumerate(spec):
            for axis in _axes(entry):
                if axis not in self.mesh.shape:
                    raise ValueError(f"Parameter '{name}': partition spec {tuple(spec)} names "
                                     f"mesh axis '{axis}', but the mesh has axes "
                                     f"{dict(self.mesh.shape)}.")
            size = math.prod(self.mesh.shape[a] for a in _axes(entry))
            if shape[dim] % size:
                raise ValueError(f"Parameter '{name}' of shape {shape}: dimension {dim} (size "
                                 f"{shape[dim]}) does not split over axis {entry!r} of size "
                                 f"{size}. Choose another dimension or a mesh axis that "
                                 "divides it.")

    def state_shardings(self, params: Any, opt_state: Any) -> tuple[Any, Any]:
        """Shardings for the parameters and for an optimizer state (leaves shaped like a
        parameter, e.g. Adam's moments, follow that parameter; the rest is replicated)."""
        param_shardings = self.param_shardings(params)
        flat_params, _ = flatten(params)
        by_path = {names: (_shape(leaf), sharding) for (names, leaf), sharding in
                   zip(flat_params, jax.tree.leaves(param_shardings))}
        replicated = self.replicated_sharding()

        def follow(names: tuple[str, ...], leaf: Any) -> NamedSharding:
            for start in range(len(names)):
                match = by_path.get(names[start:])
                if match is not None and match[0] == _shape(leaf):
                    return match[1]
            return replicated

        flat_opt, treedef = flatten(opt_state)
        return param_shardings, jax.tree.unflatten(
            treedef, [follow(names, leaf) for names, leaf in flat_opt])

    # -- placement --------------------------------------------------------------------------
    def replicated_sharding(self) -> NamedSharding:
        """Whole on every device."""
        return NamedSharding(self.mesh, P())

    def replicate(self, tree: Any) -> Any:
        """Places a pytree whole on every device."""
        return self.place(tree, self.replicated_sharding())

    def place(self, tree: Any, shardings: Any) -> Any:
        """Places a pytree with the given shardings (a sharding or a pytree prefix of them)."""
        if isinstance(shardings, NamedSharding):
            return jax.tree.map(lambda leaf: put(leaf, shardings), tree)
        return jax.tree.map(lambda sharding, sub: self.place(sub, sharding), shardings, tree)

    def chunk_sharding(self) -> NamedSharding:
        """A chunk of stacked batches: axis 1 (the batch) split over ``"data"``."""
        return NamedSharding(self.mesh, P(None, DATA))

    def place_chunk(self, chunk: Any) -> Any:
        """Places this process's rows of a chunk as global arrays (batch axis on ``"data"``).

        With one process that is a ``device_put``; with several, each process holds its block
        of every global batch and the global array is assembled from them.
        """
        sharding = self.chunk_sharding()
        if jax.process_count() == 1:
            return jax.device_put(chunk, sharding)
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), chunk)

    def create(self, factory: Callable[[], nnx.Module]) -> nnx.Module:
        """Builds ``factory()`` with every parameter created in place, already sharded.

        The module is traced abstractly first (no memory), then built inside one jitted
        function whose outputs carry the parameter shardings, so no parameter is ever
        materialised whole on one device.
        """
        with jax.set_mesh(self.mesh):
            abstract = nnx.eval_shape(factory, graph=GRAPH)
            if not isinstance(abstract, nnx.Module):
                raise TypeError(f"The function given to ef.Model must return an nnx.Module; "
                                f"it returned {type(abstract).__name__}.")
            shardings = self.param_shardings(nnx.state(abstract, nnx.Param, graph=GRAPH))

            def build() -> nnx.Module:
                module = factory()
                params = nnx.state(module, nnx.Param, graph=GRAPH)
                nnx.update(module, jax.lax.with_sharding_constraint(params, shardings))
                return module

            return nnx.jit(build, graph=GRAPH)()

    def describe(self) -> str:
        """One line: the mesh axes and sizes, and the strategy."""
        axes = ", ".join(f"{name}={size}" for name, size in self.mesh.shape.items())
        return f"{type(self).__name__} on a mesh of {self.mesh.size} device(s) ({axes})"


class DataParallel(Distribution):
    """Parameters replicated on every device, each batch split over all of them.

    Args:
        devices: the devices to use (default: all devices of all processes).

    Examples:
        >>> model = ef.Model(net, distribution=ef.distribute.DataParallel())  # doctest: +SKIP
    """

    def __init__(self, devices: Sequence[Any] | None = None):
        super().__init__({DATA: -1}, devices)


class FSDP(Distribution):
    """Fully sharded data parallel: batches split over all devices, and each parameter (with
    its optimizer state) split along its largest dimension that the device count divides.

    XLA gathers a parameter where a layer needs it whole, so per-device memory for
    parameters and optimizer state falls with the device count.

    Args:
        min_size: parameters with fewer elements stay replicated (splitting a bias saves
            nothing and costs a gather).
        devices: the devices to use (default: all devices of all processes).

    Examples:
        >>> model = ef.Model(net, distribution=ef.distribute.FSDP())  # doctest: +SKIP
    """

    def __init__(self, min_size: int = 1024, devices: Sequence[Any] | None = None):
        super().__init__({DATA: -1}, devices)
        self.min_size = min_size

    def param_spec(self, name: str, shape: tuple[int, ...], annotation: Spec | None) -> Spec:
        n = self.num_replicas
        if math.prod(shape) < self.min_size or n == 1:
            return ()
        divisible = [d for d in range(len(shape)) if shape[d] % n == 0]
        if not divisible:
            return ()
        dim = max(divisible, key=lambda d: (shape[d], -d))
        return tuple(DATA if d == dim else None for d in range(len(shape)))


class ModelParallel(Distribution):
    """A mesh with a ``"data"`` axis and model axes; parameters placed by rules.

    A parameter's placement is, in order: the first rule whose regex matches its path
    (``re.search`` on paths like ``"blocks/0/attn/query/kernel"``), else its
    ``nnx.with_partitioning`` annotation, else replicated.

    Args:
        mesh_shape: axis name -> size, e.g. ``{"data": 2, "model": 4}``; it must hold a
            ``"data"`` axis; one size may be ``-1``.
        rules: ``{regex: spec}``, a spec being one mesh axis name (or ``None``) per
            dimension, e.g. ``{r"attn.*kernel": (None, "model")}``. A rule that matches no
            parameter is an error.
        devices: the devices to use (default: all devices of all processes).

    Examples:
        >>> dist = ef.distribute.ModelParallel(  # doctest: +SKIP
        ...     {"data": 2, "model": 4}, rules={r"mlp/.*kernel": (None, "model")})
    """

    def __init__(self, mesh_shape: Mapping[str, int],
                 rules: Mapping[str, Spec] | None = None,
                 devices: Sequence[Any] | None = None):
        super().__init__(mesh_shape, devices)
        self.rules = [(re.compile(pattern), tuple(spec)) for pattern, spec in
                      (rules or {}).items()]

    def param_spec(self, name: str, shape: tuple[int, ...], annotation: Spec | None) -> Spec:
        for pattern, spec in self.rules:
            if pattern.search(name):
                return spec
        return tuple(annotation) if annotation else ()

    def _check_rules_used(self, params: Any) -> None:
        names = ["/".join(names) for names, _ in flatten(params)[0]]
        for pattern, spec in self.rules:
            if not any(pattern.search(name) for name in names):
                shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
                raise ValueError(f"Sharding rule {pattern.pattern!r} -> {spec} matches no "
                                 f"parameter. Parameter paths are: {shown}.")
