"""Sharded training: 8 fake CPU devices (DataParallel, FSDP, 2x4 ModelParallel), two
processes through ``ef.distribute.initialize``, checkpoints moving between device counts,
and the errors of bad meshes, rules and batch sizes.

The multi-device runs happen in subprocesses (JAX fixes its device count at start-up); each
writes a JSON of what it saw, and the tests below assert on it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

import easyfit as ef

HERE = os.path.dirname(os.path.abspath(__file__))


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
    return env


def _run(args: list[str], env: dict[str, str], timeout: int = 300) -> None:
    done = subprocess.run([sys.executable, *args], cwd=HERE, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("mesh")
    _run(["mesh_script.py", str(out / "mesh.json"), str(out / "ckpt")],
         _env(XLA_FLAGS="--xla_force_host_platform_device_count=8"))
    return json.loads((out / "mesh.json").read_text())


# -- 8 devices in one process --------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["data_parallel", "fsdp", "model_parallel"])
def test_eight_devices_match_one_device_per_epoch(mesh, strategy):
    assert mesh["devices"] == 8
    reference = mesh["runs"]["one_device"]
    assert reference["mesh"] == {"data": 1}
    run = mesh["runs"][strategy]
    assert len(run["loss"]) == 3
    np.testing.assert_allclose(run["loss"], reference["loss"], atol=1e-5)


def test_arrays_held_on_eight_devices_train_as_from_the_host(mesh):
    np.testing.assert_allclose(mesh["runs"]["data_parallel"]["loss"],
                               mesh["runs"]["data_parallel_from_host"]["loss"], rtol=1e-6)


@pytest.mark.parametrize("strategy", ["data_parallel", "fsdp", "model_parallel"])
def test_train_step_compiles_once_per_chunk_size(mesh, strategy):
    run = mesh["runs"][strategy]
    # steps_per_execution="auto": one program, or two when it measures from single steps
    assert run["compiles_first_fit"] == run["train_programs"]
    assert run["compiles_second_fit"] == 0


def test_data_parallel_replicates_parameters(mesh):
    run = mesh["runs"]["data_parallel"]
    assert run["mesh"] == {"data": 8}
    assert set(run["params"].values()) == {"P()"}


def test_fsdp_shards_parameters_and_optimizer_state(mesh):
    run = mesh["runs"]["fsdp"]
    params = run["params"]
    # each kernel split over "data" along its largest dimension that 8 divides
    assert params["['l1']['kernel'].value"] == "P(None, 'data')"      # (16, 64)
    assert params["['l2']['kernel'].value"] == "P('data', None)"      # (64, 64)
    # below min_size (1024 elements) stays replicated
    assert params["['l1']['bias'].value"] == "P()"
    # Adam's moments follow their parameter; counts stay replicated
    moments = {path: spec for path, spec in run["opt_state"].items()
               if "['l2']['kernel']" in path}
    assert len(moments) == 2 and set(moments.values()) == {"P('data', None)"}
    assert any(spec == "P()" for path, spec in run["opt_state"].items() if "count" in path)


def test_model_parallel_follows_rules_then_annotations(mesh):
    run = mesh["runs"]["model_parallel"]
    assert run["mesh"] == {"data": 2, "model": 4}
    assert run["params"]["['l1']['kernel'].value"] == "P(None, 'model')"   # rule
    assert run["params"]["['out']['kernel'].value"] == "P('model', None)"  # rule
    assert run["params"]["['l2']['kernel'].value"] == "P('model', None)"   # with_partitioning
    assert run["params"]["['l2']['bias'].value"] == "P()"                  # neither
    assert "P(None, 'model')" in run["summary"] and "data=2, model=4" in run["summary"]


def test_bad_batch_mesh_rule_and_dimension_are_named(mesh):
    errors = mesh["errors"]
    assert "batch_size=36" in errors["batch"] and "multiple of 8" in errors["batch"]
    assert "needs 6 devices" in errors["mesh"] and "8 are available" in errors["mesh"]
    assert "'attention/kernel'" in errors["rule"] and "matches no parameter" in errors["rule"]
    assert "l1/kernel" in errors["rule"]  # the paths that exist are listed
    assert "'out/kernel' of shape (64, 4)" in errors["divisible"]
    assert "size 8" in errors["divisible"]


def test_checkpoints_move_between_eight_devices_and_one(mesh):
    moved = mesh["reshard"]
    assert moved["8to1_equal_weights"] and moved["1to8_equal_weights"]
    # the same weights give the same predictions, up to float reassociation across devices
    assert moved["8to1"] < 1e-5 and moved["1to8"] < 1e-5
    assert moved["1to8_params"]["['l2']['kernel'].value"] == "P('data', None)"


# -- two processes -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("pair")
    port, env = _free_port(), _env()
    procs = [subprocess.Popen([sys.executable, "multihost_script.py", "pair", str(port), str(i),
                               str(out)], cwd=HERE, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    _run(["multihost_script.py", "single", str(out)], env)
    read = lambda name: json.loads((out / f"{name}.json").read_text())
    return {"p0": read("pair-0"), "p1": read("pair-1"), "single": read("single"), "dir": out,
            "stdout": logs}


@pytest.mark.slow
def test_two_processes_train_like_one_device(pair):
    p0, p1, single = pair["p0"], pair["p1"], pair["single"]
    assert p0["loss"] == p1["loss"]            # one global computation, seen by both
    np.testing.assert_allclose(p0["loss"], single["loss"], atol=1e-5)
    np.testing.assert_allclose(p0["val_loss"], single["val_loss"], atol=1e-5)


@pytest.mark.slow
def test_only_process_zero_writes_logs(pair):
    assert pair["p0"]["csv_written"] and not pair["p1"]["csv_written"]
    assert not os.path.exists(pair["dir"] / "log-1.csv")
    # the progress display (verbose=2) is the chief's; the other process trained alongside
    chief, other = pair["stdout"]
    assert chief.count("Epoch ") >= 4 and "Evaluate - " in chief and "Predict - " in chief
    assert "Epoch " not in other and "Evaluate - " not in other


@pytest.mark.slow
def test_two_processes_take_the_same_stopping_decisions(pair):
    assert pair["p0"]["early_stopping_epochs"] == pair["p1"]["early_stopping_epochs"] == 2
    # stop_training set on process 1 only stops both after that epoch
    assert pair["p0"]["stop_training_epochs"] == pair["p1"]["stop_training_epochs"] == 1


@pytest.mark.slow
def test_checkpoint_of_two_processes_restores_in_one(pair):
    np.testing.assert_allclose(pair["single"]["predictions"], pair["p0"]["predictions"],
                               atol=1e-5)
    assert len(pair["p0"]["predictions"]) == 37  # every row, gathered from both processes


@pytest.mark.slow
def test_model_saved_by_two_processes_loads_in_one(pair):
    single = pair["single"]
    np.testing.assert_allclose(single["loaded_predictions"], pair["p0"]["predictions"],
                               atol=1e-5)
    # compiled, with its step count and optimizer state: one more epoch of 5 steps goes on
    assert single["loaded_resumes"] == 1
    assert single["loaded_steps"] == (len(pair["p0"]["loss"]) + 1) * 5  # 200 rows, 40 a step


# -- in this process -----------------------------------------------------------------------


def test_distribution_must_be_a_strategy():
    with pytest.raises(TypeError, match=r"DataParallel\(\), FSDP\(\), ModelParallel"):
        ef.Model(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), distribution="fsdp")


def test_mesh_shape_needs_a_data_axis():
    with pytest.raises(ValueError, match="no 'data' axis"):
        ef.distribute.ModelParallel({"model": 1})


def test_factory_must_build_a_module():
    with pytest.raises(TypeError, match="must return an nnx.Module"):
        ef.Model(lambda: 3)


def test_factory_builds_the_same_module_as_a_direct_call():
    built = ef.Model(lambda: nnx.Linear(3, 2, rngs=nnx.Rngs(1))).module
    direct = nnx.Linear(3, 2, rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(np.asarray(built.kernel[...]), np.asarray(direct.kernel[...]))


def test_initialize_validates_the_process_id():
    with pytest.raises(ValueError, match="process_id=2"):
        ef.distribute.initialize("127.0.0.1:1", num_processes=2, process_id=2)


def test_initialize_reads_the_environment(monkeypatch):
    seen = {}
    monkeypatch.setattr("jax.distributed.initialize", lambda **kw: seen.update(kw))
    monkeypatch.setattr("easyfit.distribute.hosts.is_initialized", lambda: False)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.1.2.3:9999")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    ef.distribute.initialize()
    assert seen["coordinator_address"] == "10.1.2.3:9999"
    assert seen["num_processes"] == 4 and seen["process_id"] == 3
