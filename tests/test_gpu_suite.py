"""The GPU suite's smoke mode (``benchmarks/gpu/run.sh OUT --smoke``): every part runs at
tiny sizes on the CPU and reports numbers, so the suite cannot rot between GPU runs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = ("versions", "speed_transformer", "speed_cnn", "memory_transformer", "memory_cnn",
         "distribution", "tests")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_smoke_mode_reports_every_part_with_numbers(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu", "run.sh"), str(out),
                           "--smoke"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["size"] == "smoke"
    parts = results["parts"]
    assert set(parts) == set(PARTS)
    failed = {name: part.get("error") for name, part in parts.items() if not part.get("ok")}
    assert not failed, failed

    assert parts["versions"]["jax"] and parts["versions"]["devices"]
    for model, unit in (("transformer", "tokens"), ("cnn", "images")):
        speed = parts[f"speed_{model}"]
        for key in ("easyfit_step_ms", "hand_step_ms", "ratio", f"easyfit_{unit}_per_s",
                    "model_flops_per_step", "easyfit_mfu", "easyfit_loss", "hand_loss"):
            assert _number(speed[key]), (model, key, speed[key])
        # same model, data, optimizer and precision: the losses agree to a few percent
        assert abs(speed["easyfit_loss"] - speed["hand_loss"]) < 0.1 * speed["hand_loss"]
        memory = parts[f"memory_{model}"]
        assert memory["estimate_total_bytes"] > memory["estimate_parts"]["params"] > 0
        assert memory["measured_peak_bytes"] is None  # the CPU keeps no memory statistics
    distribution = parts["distribution"]
    assert distribution["passed"] and _number(distribution["fsdp_loss"])
    assert parts["tests"]["counts"] == {"passed": 1}

    table = (out / "results.md").read_text()
    for heading in ("### Speed", "### Memory", "### Distribution", "### Device-facing tests"):
        assert heading in table
    assert "FAILED" not in table
    assert len(os.listdir(out)) <= 8  # the GPU tool brings back at most 8 files
