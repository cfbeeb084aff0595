"""Preemption: a SIGTERM sent to a training process makes BackupAndRestore back up the step
reached and exit with status 143; the rerun resumes from that step, bit-exact."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import easyfit as ef
from easyfit.checkpoint import Checkpoints
from test_distribute import _env, _free_port
from test_resume import SCRIPT, HERE, _finish, _load, _run_script


@pytest.mark.slow
def test_sigterm_at_a_random_step_backs_up_that_step_and_the_rerun_matches(tmp_path):
    sys.path.insert(0, HERE)
    try:
        import resume_script as script
    finally:
        sys.path.remove(HERE)
    total = script.STEPS_PER_EPOCH * script.EPOCHS
    chooser = random.Random("easyfit:test_sigterm_at_a_random_step")
    target = chooser.randrange(2, total - 4)
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    backup = tmp_path / "backup"
    never = 10_000  # no scheduled backup: only the preemption's
    reference = _run_script(tmp_path / "reference.npz", tmp_path / "reference_backup", 0,
                            never, env)
    assert _finish(reference)[0] == 0

    proc = subprocess.Popen([sys.executable, SCRIPT, str(tmp_path / "resumed.npz"), str(backup),
                             "0", str(never)], env=dict(env, REPORT_STEPS="1"), cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []  # one pipe for both streams: a full stderr pipe would block the child
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("step ") and int(line.split()[1]) >= target:
            proc.send_signal(signal.SIGTERM)  # from outside, as a scheduler sends it
            break
    output = "".join(seen) + proc.communicate(timeout=240)[0]
    assert proc.returncode == 143, output[-3000:]
    assert "SIGTERM received" in output and "run the same script again" in output
    assert not (tmp_path / "resumed.npz").exists()
    saved = Checkpoints(backup, async_save=False).steps()
    assert len(saved) == 1 and target <= saved[0] < total, (saved, target)

    code, output = _finish(_run_script(tmp_path / "resumed.npz", backup, 0, never, env))
    assert code == 0, output
    weights, before, history, steps = _load(tmp_path / "resumed.npz")
    ref_weights, ref_before, ref_history, ref_steps = _load(tmp_path / "reference.npz")
    assert steps == ref_steps == total
    assert history == ref_history
    for got, want in ((weights, ref_weights), (before, ref_before)):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=f"SIGTERM at step {saved[0]}")
    assert not backup.exists()


@pytest.mark.slow
def test_sigterm_to_one_of_two_processes_backs_up_the_same_step_on_both(tmp_path):
    port, env = _free_port(), _env()
    procs = [subprocess.Popen([sys.executable, "multihost_script.py", "preempt", str(port),
                               str(i), str(tmp_path)], cwd=HERE, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 143, log[-3000:]
        assert "backup of step 5" in log
    assert Checkpoints(tmp_path / "backup", async_save=False).steps() == [5]


def test_the_users_sigterm_handler_is_restored_after_fit(tmp_path):
    def users_handler(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, users_handler)
    try:
        model = ef.Model(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
        model.compile("sgd", "mse")
        x = np.ones((8, 2), np.float32)
        model.fit(x, x, epochs=1, verbose=0,
                  callbacks=[ef.callbacks.BackupAndRestore(str(tmp_path / "b"))])
        assert signal.getsignal(signal.SIGTERM) is users_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
