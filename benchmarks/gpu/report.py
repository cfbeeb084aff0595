"""The GPU suite's markdown: its results as the tables of ``benchmarks/RESULTS-gpu.md``."""

from __future__ import annotations

from typing import Any

GIB = 2.0 ** 30


def _f(value: Any, spec: str = ".3g", scale: float = 1.0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value / scale:{spec}}{suffix}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(row) + " |" for row in rows], ""]


def _ran(parts: dict, names: tuple[str, ...]) -> tuple[list[dict], list[str]]:
    """The named parts that ran, and the failure lines of those that failed."""
    done, failures = [], []
    for name in names:
        if name in parts and parts[name].get("ok"):
            done.append(parts[name])
        elif name in parts:
            failures += _failed(name, parts[name])
    return done, failures


def _failed(name: str, part: dict) -> list[str]:
    return [f"**{name} failed** after {part.get('seconds')} s:", "", "```",
            str(part.get("error", "no error text"))[-1500:], "```", ""]


def markdown(results: dict) -> str:
    """The tables of one run of the suite, with its date, versions and timings."""
    parts = results["parts"]
    v = parts.get("versions", {})
    lines = [f"## GPU suite run, {results['date']} ({results['size']} sizes, "
             f"{results.get('seconds')} s)", "",
             f"Device: {v.get('device_kind', '?')} x{len(v.get('devices', []))} "
             f"({v.get('backend', '?')}); Python {v.get('python')}, jax {v.get('jax')}, "
             f"jaxlib {v.get('jaxlib')}, flax {v.get('flax')}, optax {v.get('optax')}, "
             f"orbax-checkpoint {v.get('orbax-checkpoint')}, numpy {v.get('numpy')}.", "",
             "Part times: " + ", ".join(f"{name} {p.get('seconds')} s"
                                        + ("" if p.get("ok") else " (FAILED)")
                                        for name, p in parts.items()) + ".", ""]

    lines += ["### Speed: easyfit `fit` against the same hand-written jitted step", ""]
    done, failures = _ran(parts, ("speed_transformer", "speed_cnn"))
    rows = []
    for p in done:
        unit = "tokens" if p["model"] == "transformer" else "images"
        c = p["config"]
        shape = (f"{c['depth']}x{c['width']}, T={c['seq_len']}, V={c['vocab']}"
                 if p["model"] == "transformer" else f"widths {tuple(c['widths'])}x{c['blocks']}")
        rows.append([p["model"], f"{shape}, B={c['batch']}, {c['precision']}",
                     _f(p["params"], ".1f", 1e6, "M"),
                     _f(p["easyfit_step_ms"], ".2f"), _f(p["hand_step_ms"], ".2f"),
                     _f(p["ratio"], ".3f"), f"{_f(p[f'easyfit_{unit}_per_s'], ',.0f')} {unit}/s",
                     _f(p.get("easyfit_mfu"), ".1%"), _f(p.get("hand_mfu"), ".1%"),
                     _f(p.get("easyfit_mfu_vs_measured"), ".1%"),
                     _f(p["easyfit_first_fit_s"], ".1f"), p["flops_source"]])
    lines += _table(["model", "config", "params", "easyfit ms/step", "hand ms/step",
                     "hand/easyfit", "easyfit throughput", "MFU easyfit (989T)",
                     "MFU hand (989T)", "MFU easyfit (790T)", "first trial s",
                     "FLOPs counted by"], rows) + failures

    lines += ["### Memory: `estimate_memory` against the measured peak", ""]
    done, failures = _ran(parts, ("memory_transformer", "memory_cnn"))
    rows = []
    for p in done:
        rows.append([p["model"], str(p["batch"]), str(p["steps_per_execution"]),
                     _f(p["estimate_total_bytes"], ".2f", GIB),
                     _f(p["estimate_step_peak_bytes"], ".2f", GIB),
                     _f(p["measured_peak_bytes"], ".2f", GIB), _f(p["ratio"], ".3f")])
    lines += _table(["model", "batch", "steps/dispatch", "estimate total GiB",
                     "estimate step peak GiB", "measured peak GiB", "estimate/measured"],
                    rows) + failures

    lines += ["### Distribution strategies on the device(s) at hand", ""]
    p = parts.get("distribution", {})
    if not p:
        lines += ["Not run.", ""]
    elif p.get("ok"):
        lines += _table(["devices", "default loss", "DataParallel loss", "FSDP loss",
                         "max relative difference", "passed"],
                        [[str(p["devices"]), _f(p["default_loss"], ".6f"),
                          _f(p["data_parallel_loss"], ".6f"), _f(p["fsdp_loss"], ".6f"),
                          _f(p["max_rel_diff"], ".2e"), str(p["passed"])]])
    else:
        lines += _failed("distribution", p)

    lines += ["### Device-facing tests", ""]
    p = parts.get("tests", {})
    if not p:
        return "\n".join(lines + ["Not run.", ""])
    counts = ", ".join(f"{n} {word}" for word, n in p.get("counts", {}).items()) or "no summary"
    lines += [f"`pytest {' '.join(p.get('files', []))}` ({p.get('select', '')}): {counts} "
              f"in {p.get('seconds')} s (exit code {p.get('exit_code')}).", ""]
    lines += [f"- failed: `{test}`" for test in p.get("failed_tests", [])]
    return "\n".join(lines) + "\n"
