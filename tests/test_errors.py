"""Bad input: one stderr line 'rl-run: error: ...', exit code 2, no traceback, nothing lost.

Most checks call rl-run's main() in this process (`rl_run` below): the argument checks that
reject them run before Hydra starts, and a fresh interpreter per case would only pay the torch,
Hydra and gymnasium imports again. A few cases run the real `rl-run` command, for the contract
as a shell sees it (exit 2, one line, no traceback, files untouched).
"""
from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import gymnasium as gym
import pytest

from tests.conftest import FAST, error_line, read_results, run_cli
from tests.helpers.multidiscrete_env import ENV_ID as MD_ENV_ID
from tests.helpers.multidiscrete_env import MODULE_ENV_ID as MD_MODULE_ENV_ID

SHORT = [*FAST, "trainer.total_steps=512", "algo.n_steps=32", "env.n_envs=4",
         "algo.batch_size=64"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digests(run_dir: Path) -> dict[str, str]:
    """sha256 of every file a finished run wrote (train.log aside: it may only grow)."""
    return {str(p.relative_to(run_dir)): digest(p) for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != "train.log"}


def assert_says(line: str, *words: str) -> None:
    for word in words:
        assert word in line, f"{word!r} missing from: {line}"


@pytest.fixture
def rl_run(refused_in_process, tmp_path):
    """rl-run's main() in this process (conftest.refused_in_process), one error line back; the
    run goes into tmp_path/run unless the arguments name a directory or resume (as run_cli)."""
    def run(args: list[str], run_dir: Path | None = None) -> str:
        args = [str(a) for a in args]
        if not any(a.startswith(("-", "hydra.run.dir=", "resume=")) for a in args):
            args.append(f"hydra.run.dir={run_dir or tmp_path / 'run'}")
        return refused_in_process(args)

    return run


# ---- the contract, through the real command ----------------------------------------------------
def test_unknown_algo_lists_choices(cli):
    line = error_line(cli(["algo=ppoo", *FAST]))
    assert_says(line, "unknown algo", "'ppoo'", "ppo", "pg")


# ---- names -------------------------------------------------------------------------------------
def test_unknown_env_lists_choices(rl_run):
    line = rl_run(["env=cartpol", *FAST])
    assert_says(line, "unknown env", "'cartpol'", "cartpole", "pendulum", "gym")


def test_unknown_algo_in_a_sweep(rl_run):
    line = rl_run(["-m", "algo=ppo,nope", *FAST])
    assert_says(line, "unknown algo", "'nope'")


def test_unregistered_gym_id_suggests_the_close_one(rl_run, tmp_path):
    line = rl_run(["env=gym", "env.id=CartPol-v1", *FAST])
    assert_says(line, "CartPol-v1", "CartPole-v1")
    assert not (tmp_path / "run" / "results.json").exists()


def test_gym_without_id(rl_run):
    # at 110a146 this printed Hydra's traceback (MissingMandatoryValue) and exited 1
    line = rl_run(["env=gym", *FAST])
    assert_says(line, "env.id")


# ---- values ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-5"])
def test_non_positive_budget(rl_run, value):
    line = rl_run([f"trainer.total_steps={value}", *FAST])
    assert_says(line, f"trainer.total_steps={value}", "positive")


def test_zero_envs(rl_run):
    line = rl_run(["env.n_envs=0", *FAST])
    assert_says(line, "env.n_envs=0", "positive")


def test_env_kwargs_that_fail_at_the_first_step(cli, tmp_path):
    """Pendulum's g is read in step only: the check stepped nothing, and the run died with a
    traceback at its first step, a failed run dir left behind."""
    line = error_line(cli(["algo=ppo", "env=pendulum", "+env.kwargs.g=abc", *FAST]))
    assert_says(line, "env.kwargs {'g': 'abc'} rejected by Pendulum-v1", "unsupported operand")
    assert not (tmp_path / "run").exists()

def test_negative_learning_rate(rl_run):
    line = rl_run(["algo.lr=-0.1", *FAST])
    assert_says(line, "algo.lr=-0.1", "negative")


def test_budget_of_the_wrong_type(rl_run):
    line = rl_run(["trainer.total_steps=abc", *FAST])
    assert_says(line, "trainer.total_steps", "abc", "wrong type", "int")


def test_a_value_the_algorithm_itself_refuses(rl_run):
    line = rl_run(["algo.objective=foo", *FAST])
    assert_says(line, "algo.objective='foo'", "clip, kl_penalty")


def test_thread_count_that_is_neither_a_number_nor_auto(rl_run):
    line = rl_run(["trainer.torch_threads=many", *FAST])
    assert_says(line, "trainer.torch_threads='many'", "auto")


def test_hidden_sizes_of_the_wrong_type(rl_run):
    line = rl_run(["algo.hidden_sizes=[64,x]", *FAST])
    assert_says(line, "algo.hidden_sizes", "wrong type")


def test_unknown_algo_key(rl_run):
    line = rl_run(["algo.learning_rate=0.1", *FAST])
    assert_says(line, "algo.learning_rate")


def test_unparsable_override(rl_run):
    line = rl_run(["algo.lr=[1,", *FAST])
    assert_says(line, "parse")


# ---- resume ------------------------------------------------------------------------------------
def test_resume_missing_directory(rl_run, tmp_path):
    missing = tmp_path / "no_such_run"
    line = rl_run([f"resume={missing}"])
    assert_says(line, "resume", str(missing), "no such")
    assert not missing.exists()


def test_resume_corrupt_checkpoint_keeps_everything(finished_run, tmp_path):
    """Through the real command: nothing of the run is rewritten, not even a lock file."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(b"\x00not a checkpoint\xff" * 64)
    before = tree_digests(run_dir)
    line = error_line(run_cli([f"resume={run_dir}"], tmp_path))
    assert_says(line, str(last), "checkpoint")
    assert tree_digests(run_dir) == before  # results.json, .hydra/, tb/, last.pt: untouched
    assert read_results(run_dir)["status"] == "completed"


def test_resume_rejects_non_trainer_overrides(finished_run, tmp_path, rl_run):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    before = tree_digests(run_dir)
    line = rl_run([f"resume={run_dir}", "algo.lr=0.1"])
    assert_says(line, "algo.lr", "trainer.")
    assert tree_digests(run_dir) == before


# ---- action spaces -----------------------------------------------------------------------------
def test_unsupported_action_space_names_what_is_supported(rl_run):
    """The helper module registered the env in this process (imported above)."""
    assert MD_ENV_ID in gym.registry
    line = rl_run(["env=gym", f"env.id={MD_ENV_ID}", *FAST])
    assert_says(line, "cannot handle", "MultiDiscrete", "Box")


def test_module_qualified_gym_id_is_accepted(rl_run, monkeypatch):
    # as in a fresh process: the helper module not imported, its env not registered; gymnasium
    # imports the module named before the colon (monkeypatch puts both back afterwards)
    monkeypatch.delitem(sys.modules, "tests.helpers.multidiscrete_env")
    monkeypatch.delitem(gym.registry, MD_ENV_ID)
    line = rl_run(["env=gym", f"env.id={MD_MODULE_ENV_ID}", *FAST])
    # the id resolves; the run then stops at the action-space check, not at the id check
    assert_says(line, "cannot handle", "MultiDiscrete")
    assert MD_ENV_ID in gym.registry


# ---- an existing run directory -----------------------------------------------------------------
@pytest.fixture(scope="module")
def second_run_into_finished_dir(finished_run, tmp_path_factory):
    """A copy of the finished run, then a second (different) run pointed at the same directory,
    by the real command: Hydra must not start (at 110a146 it rewrote .hydra/ first)."""
    base = tmp_path_factory.mktemp("twice")
    run_dir = base / "run"
    shutil.copytree(finished_run, run_dir)
    before = tree_digests(run_dir)
    proc = run_cli([*SHORT, "seed=1", f"hydra.run.dir={run_dir}"], base)
    return run_dir, before, proc


def test_second_run_into_the_same_directory_fails(second_run_into_finished_dir):
    run_dir, before, proc = second_run_into_finished_dir
    line = error_line(proc)
    assert_says(line, "already holds a run", str(run_dir), "resume=")
    after = tree_digests(run_dir)
    for name in ("results.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert after[name] == before[name], name
    assert read_results(run_dir)["seed"] == 0
    assert [p for p in after if p.startswith("tb/")] == [p for p in before if p.startswith("tb/")]


def test_second_run_leaves_the_first_runs_config(second_run_into_finished_dir):
    # at 110a146 Hydra rewrote .hydra/ with the rejected run's config before the trainer refused
    run_dir, before, _ = second_run_into_finished_dir
    after = tree_digests(run_dir)
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml"):
        assert after[name] == before[name], name


def test_an_algo_target_that_cannot_be_imported_is_one_line(rl_run):
    line = rl_run(["algo._target_=no_such_module.Algo"])
    assert_says(line, "algo._target_='no_such_module.Algo'", "cannot be imported")


@pytest.mark.parametrize("override, says", [
    ("algo.lr=${oc.env:RL_RUNNER_UNSET_VARIABLE}", "does not resolve"),
    ("algo.lr=${no.such.key}", "does not resolve"),
    ("algo.lr=nan", "finite"), ("algo.ent_coef=inf", "finite"),
    ("algo.hidden_sizes=[64,0]", "has an entry 0 that must be positive"),
    ("+trainer.foo=1", "not a trainer key"),
    ("logger.tensorboard.flush_secs=-1", "must be positive"),
    ("trainer=fast", "unknown trainer"),
    ("algo.activation=foo", "algo.activation='foo' is not known; allowed: tanh, relu"),
    ("env.n_envs=5000", "more than 4096"),
])
def test_values_caught_before_any_run_dir(rl_run, tmp_path, monkeypatch, override, says):
    monkeypatch.delenv("RL_RUNNER_UNSET_VARIABLE", raising=False)
    line = rl_run([override], run_dir=tmp_path / "outputs" / "run")
    assert says in line, line
    assert not (tmp_path / "outputs").exists()


def test_an_added_unknown_key_is_not_suggested_back(rl_run):
    line = rl_run(["+algo.foo=1"])
    assert "did you mean algo.foo" not in line, line


def test_resume_of_an_unusable_saved_config_is_one_line(finished_run, tmp_path, rl_run):
    run_dir = tmp_path / "copy"
    shutil.copytree(finished_run, run_dir)
    (run_dir / ".hydra" / "config.yaml").write_text("[1, 2, 3]\n")
    assert "not a config" in rl_run([f"resume={run_dir}"])
    assert "one value" in rl_run([f"resume={run_dir}", "trainer.total_steps=4096,8192"])
