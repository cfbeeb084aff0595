"""The MLP the benchmarks share: dense layers with relu between them; the last gives logits."""

from __future__ import annotations

from flax import nnx


class MLP(nnx.Module):
    """Dense layers of ``sizes`` with relu between them; the last layer gives logits."""

    def __init__(self, sizes: tuple[int, ...], rngs: nnx.Rngs):
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)
