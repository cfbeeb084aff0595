"""The models of the real-model examples, importable by the benchmarks and the GPU suite.

``CharTransformer``: a decoder-only transformer (pre-LayerNorm, causal self-attention,
GELU MLP, dropout). ``ResNet``: a residual CNN with BatchNorm. Both are plain ``flax.nnx``
modules; nothing in them knows about easyfit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class CausalSelfAttention(nnx.Module):
    """Multi-head causal self-attention through ``jax.nn.dot_product_attention``: its XLA
    path on every device (the ``(T, T)`` scores are materialised; pass
    ``implementation="cudnn"`` there for a fused kernel on GPUs)."""

    def __init__(self, width: int, heads: int, dropout: float, *, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of heads {heads}.")
        self.heads = heads
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
        self.out = nnx.Linear(width, width, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, width = x.shape
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        shape = (batch, length, self.heads, width // self.heads)
        y = jax.nn.dot_product_attention(q.reshape(shape), k.reshape(shape), v.reshape(shape),
                                         is_causal=True)
        return self.dropout(self.out(y.reshape(batch, length, width)))


class Block(nnx.Module):
    """One pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, width: int, heads: int, dropout: float, *, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(width, rngs=rngs)
        self.attention = CausalSelfAttention(width, heads, dropout, rngs=rngs)
        self.ln2 = nnx.LayerNorm(width, rngs=rngs)
        self.up = nnx.Linear(width, 4 * width, rngs=rngs)
        self.down = nnx.Linear(4 * width, width, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.ln1(x))
        return x + self.dropout(self.down(nnx.gelu(self.up(self.ln2(x)))))


class CharTransformer(nnx.Module):
    """A decoder-only language model: token ids ``(B, T)`` -> next-token logits ``(B, T, V)``.

    Args:
        vocab: vocabulary size (256 for bytes).
        width: model width; ``heads`` must divide it.
        depth: number of blocks.
        heads: attention heads.
        seq_len: the longest sequence (learned positions).
        dropout: dropout rate on the residual branches.
    """

    def __init__(self, vocab: int = 256, width: int = 128, depth: int = 4, heads: int = 4,
                 seq_len: int = 128, dropout: float = 0.1, *, rngs: nnx.Rngs):
        self.tokens = nnx.Embed(vocab, width, rngs=rngs)
        self.positions = nnx.Embed(seq_len, width, rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.blocks = nnx.List([Block(width, heads, dropout, rngs=rngs) for _ in range(depth)])
        self.ln = nnx.LayerNorm(width, rngs=rngs)
        self.head = nnx.Linear(width, vocab, rngs=rngs)

    def __call__(self, ids: jax.Array) -> jax.Array:
        x = self.tokens(ids) + self.positions(jnp.arange(ids.shape[-1]))
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


# BatchNorm's running averages: 0.9 (PyTorch's 0.1) rather than Flax's and Keras's 0.99, which
# lag the weights over a short run (a few hundred steps): evaluate then read stale statistics.
BN_MOMENTUM = 0.9


class ResidualBlock(nnx.Module):
    """conv-BN-relu-conv-BN plus a shortcut (a strided 1x1 conv where the shape changes)."""

    def __init__(self, features_in: int, features: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(features_in, features, (3, 3), strides=stride, use_bias=False,
                              rngs=rngs)
        self.bn1 = nnx.BatchNorm(features, momentum=BN_MOMENTUM, rngs=rngs)
        self.conv2 = nnx.Conv(features, features, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(features, momentum=BN_MOMENTUM, rngs=rngs)
        reshapes = stride != 1 or features_in != features
        self.shortcut = nnx.data(nnx.Conv(features_in, features, (1, 1), strides=stride,
                                          use_bias=False, rngs=rngs) if reshapes else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nnx.Module):
    """A residual CNN for NHWC images: a stem, ``len(widths)`` stages (each after the first
    halves the resolution), global average pooling, and a linear classifier (logits).

    Args:
        num_classes: outputs.
        widths: channels of each stage.
        blocks: residual blocks per stage.
        in_channels: channels of the input images.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64),
                 blocks: int = 1, in_channels: int = 1, *, rngs: nnx.Rngs):
        self.stem = nnx.Conv(in_channels, widths[0], (3, 3), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(widths[0], momentum=BN_MOMENTUM, rngs=rngs)
        layers, features = [], widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(ResidualBlock(features, width, stride, rngs=rngs))
                features = width
        self.stages = nnx.List(layers)
        self.classifier = nnx.Linear(features, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn(self.stem(x)))
        for block in self.stages:
            x = block(x)
        return self.classifier(x.mean(axis=(1, 2)))
