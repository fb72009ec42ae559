"""trainer.device on a machine without a GPU: files and RNG states made on a GPU load and resume
here, a GPU that is not here is refused with one line, and auto runs on the CPU."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from rl_runner import rl_eval
from rl_runner.checkpoint import (CUDA_RNG, load_checkpoint, rng_state, save_checkpoint,
                                  seed_everything, set_rng_state)
from rl_runner.device import resolve_device
from rl_runner.errors import UserError
from tests.conftest import error_line, read_results, run_cli

# what only a machine without a GPU shows (the fakes below run anywhere)
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine")

CUDA_STATE = torch.arange(16, dtype=torch.uint8)  # the form of one CUDA generator's state


class FakeCuda:
    """torch.cuda's RNG functions on a machine with `count` GPUs, recording what is set."""

    def __init__(self, monkeypatch, count: int, initialized: bool = True):
        self.set: dict[int, torch.Tensor] = {}
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialized)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                            lambda: [CUDA_STATE + i for i in range(count)])
        monkeypatch.setattr(torch.cuda, "set_rng_state",
                            lambda state, device: self.set.__setitem__(device, state.clone()))


@cpu_only
def test_a_cpu_process_saves_no_cuda_rng_state():
    assert CUDA_RNG not in rng_state()


def test_cuda_rng_states_are_saved_and_put_back_per_device(monkeypatch):
    cuda = FakeCuda(monkeypatch, count=2)
    state = rng_state()
    assert [t.tolist() for t in state[CUDA_RNG]] == [CUDA_STATE.tolist(),
                                                      (CUDA_STATE + 1).tolist()]
    set_rng_state(state)
    assert sorted(cuda.set) == [0, 1] and torch.equal(cuda.set[1], CUDA_STATE + 1)


def test_a_gpu_process_that_never_used_cuda_saves_no_cuda_rng_state(monkeypatch):
    FakeCuda(monkeypatch, count=1, initialized=False)
    assert CUDA_RNG not in rng_state()  # reading them would start CUDA in a CPU run


def test_cuda_rng_states_go_to_the_devices_there_are(monkeypatch):
    seed_everything(3)
    state = {**rng_state(), CUDA_RNG: [CUDA_STATE, CUDA_STATE + 1, CUDA_STATE + 2]}
    cuda = FakeCuda(monkeypatch, count=1)
    set_rng_state(state)  # made on 3 GPUs, resumed on 1
    assert list(cuda.set) == [0]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cuda.set.clear()
    set_rng_state(state)  # a CPU-only machine: the CUDA part is ignored, the rest restored
    assert cuda.set == {}


def test_the_cpu_generators_are_restored_beside_a_cuda_part():
    seed_everything(5)
    state = {**rng_state(), CUDA_RNG: [CUDA_STATE]}
    expected = torch.rand(3)
    torch.rand(7)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)


@cpu_only
def test_auto_is_the_cpu_here_and_the_gpu_only_for_images(monkeypatch):
    assert resolve_device("auto", gpu_pays=True) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto", gpu_pays=True) == torch.device("cuda")
    assert resolve_device("auto", gpu_pays=False) == torch.device("cpu")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UserError, match="cuda:0 .. cuda:0"):
        resolve_device("cuda:1")


# ---- a run directory as a GPU machine writes it ------------------------------------------------
def retag_storages(path: Path, location: str) -> None:
    """Rewrite the storage location tags of a torch.save zip: each tensor's persistent id in
    data.pkl is ('storage', <type>, <key>, 'cpu', <numel>), the location a protocol-2 BINUNICODE
    (X, 4-byte length, utf-8), memoised once and referred to after. A file written on a GPU has
    'cuda:0' there; its tensor bytes (the data/<key> records) are the same."""
    records = {}
    with zipfile.ZipFile(path) as src:
        for info in src.infolist():
            records[info.filename] = src.read(info)
    pkl = next(name for name in records if name.endswith("/data.pkl"))
    cpu = b"X" + len(b"cpu").to_bytes(4, "little") + b"cpu"
    assert cpu in records[pkl]
    records[pkl] = records[pkl].replace(
        cpu, b"X" + len(location).to_bytes(4, "little") + location.encode())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for name, data in records.items():
            dst.writestr(name, data)


@pytest.fixture
def gpu_made_run(finished_run, tmp_path) -> Path:
    """A copy of a real run whose checkpoints look as if written by `trainer.device=cuda:0`: the
    config says so, the rng state has a CUDA part, and every tensor is tagged cuda:0."""
    run = tmp_path / "gpu_run"
    shutil.copytree(finished_run, run)
    for name in ("best.pt", "last.pt"):
        path = run / "checkpoints" / name
        state = load_checkpoint(path)
        state["config"]["trainer"]["device"] = "cpu"  # the retagging makes it cuda:0
        state["rng"][CUDA_RNG] = [CUDA_STATE]
        save_checkpoint(path, state)
        retag_storages(path, "cuda:0")
    return run


@cpu_only
def test_a_gpu_checkpoint_loads_on_the_cpu(gpu_made_run):
    path = gpu_made_run / "checkpoints" / "last.pt"
    with pytest.raises(RuntimeError, match="CUDA"):  # the tags say cuda: torch's own load fails
        torch.load(path, weights_only=True)
    state = load_checkpoint(path)
    assert state["config"]["trainer"]["device"] == "cuda:0"
    tensors = [v for v in state["algo"].values() if isinstance(v, torch.Tensor)] or \
        [t for part in state["algo"].values() if isinstance(part, dict)
         for t in part.values() if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert torch.equal(state["rng"][CUDA_RNG][0], CUDA_STATE)


def test_rl_eval_runs_a_gpu_checkpoint_on_the_cpu(gpu_made_run, capsys):
    rl_eval.main([f"run={gpu_made_run}", "episodes=2"])
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "error" not in out.err, out.err
    assert "return" in out.out.lower(), out.out


@pytest.mark.parametrize("device", ["cpu", "auto"])
def test_a_gpu_run_resumes_on_the_cpu(gpu_made_run, tmp_path, device):
    before = read_results(gpu_made_run)
    proc = run_cli([f"resume={gpu_made_run}", f"trainer.device={device}",
                    f"trainer.total_steps={2 * before['env_steps']}"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    after = read_results(gpu_made_run)
    assert after["status"] == "completed" and after["env_steps"] == 2 * before["env_steps"]
    state = load_checkpoint(gpu_made_run / "checkpoints" / "last.pt")
    assert state["config"]["trainer"]["device"] == device
    assert CUDA_RNG not in state["rng"]  # this process never used CUDA


@cpu_only
def test_a_gpu_run_resumed_as_it_was_here_is_one_line(gpu_made_run, tmp_path):
    line = error_line(run_cli([f"resume={gpu_made_run}"], tmp_path))
    assert "trainer.device=cuda:0" in line, line
    assert read_results(gpu_made_run)["status"] == "completed"  # untouched


def test_a_malformed_cuda_rng_state_is_one_line(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    state["rng"][CUDA_RNG] = ["not a state"]
    save_checkpoint(run / "checkpoints" / "last.pt", state)
    line = error_line(run_cli([f"resume={run}", "trainer.total_steps=1024"], tmp_path))
    assert "rng.cuda" in line, line


# ---- the command line --------------------------------------------------------------------------
@cpu_only
def test_a_gpu_that_is_not_here_is_refused_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    line = error_line(run_cli(["algo=ppo", "env=cartpole", "trainer.device=cuda",
                               "trainer.total_steps=512"], tmp_path, run_dir=run_dir))
    assert "trainer.device=cuda" in line, line
    assert not run_dir.exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("value", ["gpu", "cuda:x", "cuda0"])
def test_unknown_devices_are_refused_with_the_choices(refused_in_process, value):
    line = refused_in_process(["algo=ppo", "env=cartpole", f"trainer.device={value}"])
    assert f"trainer.device='{value}'" in line and "auto, cpu, cuda, cuda:N" in line, line


@cpu_only
def test_auto_trains_on_the_cpu_here(finished_run):
    config = load_checkpoint(finished_run / "checkpoints" / "last.pt")["config"]
    assert config["trainer"]["device"] == "auto"
    assert read_results(finished_run)["status"] == "completed"
