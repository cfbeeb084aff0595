"""``Model.summary()``: a table of layers, parameter shapes, counts and bytes."""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

from easyfit.distribute import Distribution
from easyfit.distribute.strategies import flatten
from easyfit.modules.graph import GRAPH, split
from easyfit.modules.linen import LinenModule

__all__ = ["human_bytes", "summarize", "summarize_placed"]


def human_bytes(num_bytes: float) -> str:
    """``num_bytes`` for people: ``"512 B"``, ``"1.5 KiB"``, ``"2.0 MiB"``, ``"3.1 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return ""


def summarize(module: nnx.Module, placement: dict[str, str] | None = None,
              mesh: str | None = None) -> str:
    """One row per layer that owns parameters: path, type, shapes, count, bytes; then totals.

    Args:
        module: the NNX module.
        placement: ``{"l1/kernel": "P(None, 'model')"}``: each parameter's partition spec,
            shown next to its shape when given.
        mesh: a line describing the device mesh, printed under the title.

    Examples:
        >>> print(summarize(nnx.Linear(2, 3, rngs=nnx.Rngs(0))))  # doctest: +SKIP
    """
    types = {path: type(layer).__name__ for path, layer in nnx.iter_modules(module, graph=GRAPH)}
    # A Linen module's parameters sit under linen/...; show the Linen paths.
    prefix = 1 if isinstance(module, LinenModule) else 0
    layers: dict[tuple, list[tuple[str, jax.Array]]] = {}
    for path, variable in nnx.to_flat_state(nnx.state(module, nnx.Param, graph=GRAPH)):
        spec = (placement or {}).get("/".join(map(str, path)), "")
        layers.setdefault(tuple(path[:-1]), []).append(
            (str(path[-1]), variable.get_value(), "" if spec in ("", "P()") else f" {spec}"))
    rows = [("Layer (path)", "Type", "Parameter shapes", "Params", "Bytes")]
    total_count = total_bytes = 0
    for path, params in layers.items():
        count = sum(value.size for _, value, _ in params)
        size = sum(value.nbytes for _, value, _ in params)
        total_count, total_bytes = total_count + count, total_bytes + size
        shapes = ", ".join(f"{name}{tuple(value.shape)}{spec}" for name, value, spec in params)
        kind = types.get(path) or str(path[-1]).rsplit("_", 1)[0]  # Linen: Dense_0 -> Dense
        rows.append(("/".join(map(str, path[prefix:])) or "(root)", kind, shapes,
                     f"{count:,}", human_bytes(size)))
    other = nnx.state(module, nnx.Not(nnx.Param), graph=GRAPH)
    other_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(other)
                      if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    line = lambda row: "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
    rule = "-" * len(line(rows[0]))
    out = [f'Model: "{type(module).__name__}"'] + ([mesh] if mesh else [])
    out += [rule, line(rows[0]), rule]
    out += [line(row) for row in rows[1:]] + [rule]
    out.append(f"Trainable params: {total_count:,} ({human_bytes(total_bytes)})")
    out.append(f"Other variables (batch stats, RNG state): {human_bytes(other_bytes)}")
    return "\n".join(out)


def summarize_placed(module: nnx.Module, distribution: Distribution,
                     params_sharding: Callable[[Any], Any]) -> str:
    """`summarize`, and on several devices the mesh and each sharded parameter's
    partition spec (``params_sharding(params)`` gives where training places them)."""
    if distribution.mesh.size == 1:
        return summarize(module)
    shardings = params_sharding(split(module)[0])
    placement = {"/".join(names): str(sharding.spec)
                 for names, sharding in flatten(shardings)[0]}
    return summarize(module, placement,
                     distribution.describe() + "; parameters replicated unless a spec is shown")
