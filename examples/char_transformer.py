"""A byte-level transformer language model on Python's own standard library, trained with fit.

Run:  pip install -e ".[examples]" && python examples/char_transformer.py
The text is the standard library's ``.py`` files (sorted paths under
``sysconfig.get_paths()["stdlib"]``), read as bytes: vocabulary 256, no tokenizer, nothing
downloaded. The bytes are cut into windows of ``seq_len + 1`` (inputs: the first ``seq_len``,
targets: the last ``seq_len``); the last 10% of the text is held out for validation.
``CharTransformer`` (from ``examples/models.py``) trains through ``ef.Model(...).fit`` with
AdamW, a warmup-cosine schedule and gradient clipping. It prints a greedy sample after the
prompt ``"def "``, then the validation loss in nats and bits per byte (last line; about 1.42
nats/byte, 2.05 bits/byte, after one pass over 1.8 MB: ~180 CPU-seconds, two to three
minutes on 2 idle cores). Flags make it tiny (tests) or large (a GPU):
``--max-bytes 100000 --width 32 --depth 2 --seq-len 32``. Guide: docs/guides/transformer.md.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import sysconfig
import time
from typing import Any

import numpy as np
from flax import nnx

import easyfit as ef

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import CharTransformer  # noqa: E402  (examples/models.py, beside this file)

VOCAB = 256  # bytes
# Not text worth learning from (or not stable across installs): tests and third-party packages.
SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idlelib",
                "lib2to3"}


def source_files(root: str | None = None) -> list[str]:
    """The ``.py`` files under ``root`` (default: the standard library), in sorted order.

    Tests, third-party packages and caches are left out, so the list depends only on the
    Python version.
    """
    root = root or sysconfig.get_paths()["stdlib"]
    paths = []
    for folder, folders, files in os.walk(root):
        folders[:] = sorted(d for d in folders if d not in SKIPPED_DIRS)
        paths += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".py")]
    return paths


def load_text(max_bytes: int = 2_000_000, root: str | None = None) -> np.ndarray:
    """The first ``max_bytes`` bytes of the concatenated source files, as ``uint8``.

    Args:
        max_bytes: how much text to read (the standard library has about 11 MB).
        root: a folder of ``.py`` files (default: the standard library).
    """
    chunks, size = [], 0
    for path in source_files(root):
        with open(path, "rb") as f:
            chunks.append(f.read(max_bytes - size))
        size += len(chunks[-1])
        if size >= max_bytes:
            break
    if not size:
        raise ValueError(f"No .py text found under {root or 'the standard library'}.")
    return np.frombuffer(b"".join(chunks), dtype=np.uint8)


def split_text(text: np.ndarray, validation_fraction: float = 0.1
               ) -> tuple[np.ndarray, np.ndarray]:
    """Splits the text in two: the first part for training, the last ``validation_fraction``
    held out (split before windowing, so no window spans both)."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}.")
    cut = int(len(text) * (1.0 - validation_fraction))
    return text[:cut], text[cut:]


def make_windows(text: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Cuts ``text`` into windows of ``seq_len + 1`` bytes, one every ``seq_len`` bytes (so
    every byte after the first is a target once).

    Returns:
        ``(x, y)``, both ``int32`` of shape ``(windows, seq_len)``: ``y`` is ``x`` shifted by
        one byte, the next byte at every position.
    """
    count = (len(text) - 1) // seq_len
    if count < 1:
        raise ValueError(f"The text ({len(text)} bytes) is shorter than one window of "
                         f"seq_len + 1 = {seq_len + 1} bytes.")
    starts = np.arange(count)[:, None] * seq_len
    windows = text[starts + np.arange(seq_len + 1)].astype(np.int32)
    return windows[:, :-1], windows[:, 1:]


def build(seq_len: int = 64, width: int = 128, depth: int = 4, heads: int = 4,
          dropout: float = 0.0, learning_rate: float = 3e-3, weight_decay: float = 0.01,
          clipnorm: float = 1.0, precision: str = "float32", remat: bool = False,
          seed: int = 0) -> ef.Model:
    """A compiled ``ef.Model`` of a ``CharTransformer``: AdamW, a linear warmup over the
    first 10% of the run then cosine decay (the run's length is known once ``fit`` starts),
    gradients clipped to a global norm of ``clipnorm``."""
    module = CharTransformer(vocab=VOCAB, width=width, depth=depth, heads=heads,
                             seq_len=seq_len, dropout=dropout, rngs=nnx.Rngs(seed))
    model = ef.Model(module)
    model.compile(
        optimizer=ef.optimizers.adamw(
            learning_rate=ef.schedules.warmup_cosine(peak=learning_rate, warmup=0.1),
            weight_decay=weight_decay, clipnorm=clipnorm),
        loss="sparse_categorical_crossentropy",   # (B, T, 256) logits, (B, T) byte labels
        metrics=["accuracy"],                     # next-byte accuracy over every position
        precision=precision,
        remat=remat,
        seed=seed,
    )
    return model


def generate(model: ef.Model, prompt: bytes, length: int, seq_len: int) -> bytes:
    """Greedy decoding: appends the most likely next byte ``length`` times.

    The model reads a fixed ``(1, seq_len)`` window, so ``predict`` compiles once: the
    context sits at the start, zeros after it (causal attention never looks ahead, so they
    change nothing), and the logits at the context's last position give the next byte.
    Once the text is longer than ``seq_len``, the window holds its last ``seq_len`` bytes.
    """
    if not prompt:
        raise ValueError("generate needs a prompt of at least one byte.")
    text = list(prompt)
    for _ in range(length):
        context = text[-seq_len:]
        window = np.zeros((1, seq_len), np.int32)
        window[0, :len(context)] = context
        logits = model.predict(window, batch_size=1, verbose=0)
        text.append(int(np.argmax(logits[0, len(context) - 1])))
    return bytes(text)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Loads the text, trains, evaluates and samples; returns what ``main`` prints."""
    train_text, val_text = split_text(load_text(args.max_bytes))
    x_train, y_train = make_windows(train_text, args.seq_len)
    x_val, y_val = make_windows(val_text, args.seq_len)
    model = build(args.seq_len, args.width, args.depth, args.heads, args.dropout,
                  args.learning_rate, args.weight_decay, args.clipnorm, args.precision,
                  args.remat, args.seed)
    if args.verbose:
        model.summary()
    start = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
                        steps_per_epoch=args.steps, validation_data=(x_val, y_val),
                        verbose=args.verbose)
    seconds = time.perf_counter() - start
    results = model.evaluate(x_val, y_val, batch_size=args.batch_size, verbose=0,
                             return_dict=True)
    sample = generate(model, args.prompt.encode(), args.sample_bytes, args.seq_len)
    return {**results, "seconds": seconds, "history": history.history, "sample": sample,
            "train_windows": len(x_train), "val_windows": len(x_val)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-bytes", type=int, default=2_000_000,
                        help="bytes of standard-library source to read (10%% held out)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--steps", type=int, default=None,
                        help="batches per epoch (default: all the training windows)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="on the residual branches; one pass over the text has nothing to "
                             "overfit, so 0 by default: try 0.1 with several epochs")
    parser.add_argument("--learning-rate", type=float, default=3e-3,
                        help="peak of the warmup-cosine schedule")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--clipnorm", type=float, default=1.0)
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--remat", action="store_true",
                        help="recompute each block's activations in the backward pass")
    parser.add_argument("--prompt", default="def ")
    parser.add_argument("--sample-bytes", type=int, default=200,
                        help="bytes to generate after the prompt")
    parser.add_argument("--seed", type=int, default=0, help="init, dropout and shuffling")
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2),
                        help="0 silent, 1 progress bar, 2 one line per epoch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results = run(args)
    print(f"trained {args.epochs} epoch(s) on {results['train_windows']:,} windows of "
          f"{args.seq_len} bytes in {results['seconds']:.1f}s")
    print(f"next-byte accuracy on the held-out text: {results['accuracy']:.4f}")
    print("sample:\n" + results["sample"].decode("utf-8", errors="replace"))
    nats = results["loss"]
    print(f"validation loss: {nats:.4f} nats/byte ({nats / math.log(2):.4f} bits/byte)")


if __name__ == "__main__":
    main()
