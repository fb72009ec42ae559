"""Bad input: one stderr line 'rl-run: error: ...', exit code 2, no traceback, nothing lost."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tests.conftest import FAST, REPO, error_line, read_results, run_cli
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


# ---- names -------------------------------------------------------------------------------------
def test_unknown_algo_lists_choices(cli):
    line = error_line(cli(["algo=ppoo", *FAST]))
    assert_says(line, "unknown algo", "'ppoo'", "ppo", "pg")


def test_unknown_env_lists_choices(cli):
    line = error_line(cli(["env=cartpol", *FAST]))
    assert_says(line, "unknown env", "'cartpol'", "cartpole", "pendulum", "gym")


def test_unknown_algo_in_a_sweep(cli):
    line = error_line(cli(["-m", "algo=ppo,nope", *FAST]))
    assert_says(line, "unknown algo", "'nope'")


def test_unregistered_gym_id_suggests_the_close_one(cli, tmp_path):
    line = error_line(cli(["env=gym", "env.id=CartPol-v1", *FAST]))
    assert_says(line, "CartPol-v1", "CartPole-v1")
    assert not (tmp_path / "run" / "results.json").exists()


def test_gym_without_id(cli):
    # at 110a146 this printed Hydra's traceback (MissingMandatoryValue) and exited 1
    line = error_line(cli(["env=gym", *FAST]))
    assert_says(line, "env.id")


# ---- values ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "-5"])
def test_non_positive_budget(cli, value):
    line = error_line(cli([f"trainer.total_steps={value}", *FAST]))
    assert_says(line, f"trainer.total_steps={value}", "positive")


def test_zero_envs(cli):
    line = error_line(cli(["env.n_envs=0", *FAST]))
    assert_says(line, "env.n_envs=0", "positive")


def test_negative_learning_rate(cli):
    line = error_line(cli(["algo.lr=-0.1", *FAST]))
    assert_says(line, "algo.lr=-0.1", "negative")


def test_budget_of_the_wrong_type(cli):
    line = error_line(cli(["trainer.total_steps=abc", *FAST]))
    assert_says(line, "trainer.total_steps", "abc", "wrong type", "int")


def test_a_value_the_algorithm_itself_refuses(cli):
    line = error_line(cli(["algo.objective=foo", *FAST]))
    assert_says(line, "algo.objective='foo'", "clip, kl_penalty")


def test_thread_count_that_is_neither_a_number_nor_auto(cli):
    line = error_line(cli(["trainer.torch_threads=many", *FAST]))
    assert_says(line, "trainer.torch_threads='many'", "auto")


def test_hidden_sizes_of_the_wrong_type(cli):
    line = error_line(cli(["algo.hidden_sizes=[64,x]", *FAST]))
    assert_says(line, "algo.hidden_sizes", "wrong type")


def test_unknown_algo_key(cli):
    line = error_line(cli(["algo.learning_rate=0.1", *FAST]))
    assert_says(line, "algo.learning_rate")


def test_unparsable_override(cli):
    line = error_line(cli(["algo.lr=[1,", *FAST]))
    assert_says(line, "parse")


# ---- resume ------------------------------------------------------------------------------------
def test_resume_missing_directory(cli, tmp_path):
    missing = tmp_path / "no_such_run"
    line = error_line(cli([f"resume={missing}"]))
    assert_says(line, "resume", str(missing), "no such")
    assert not missing.exists()


def test_resume_corrupt_checkpoint_keeps_everything(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    last.write_bytes(b"\x00not a checkpoint\xff" * 64)
    before = tree_digests(run_dir)
    line = error_line(run_cli([f"resume={run_dir}"], tmp_path))
    assert_says(line, str(last), "checkpoint")
    assert tree_digests(run_dir) == before  # results.json, .hydra/, tb/, last.pt: untouched
    assert read_results(run_dir)["status"] == "completed"


def test_resume_rejects_non_trainer_overrides(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    before = tree_digests(run_dir)
    line = error_line(run_cli([f"resume={run_dir}", "algo.lr=0.1"], tmp_path))
    assert_says(line, "algo.lr", "trainer.")
    assert tree_digests(run_dir) == before


# ---- action spaces -----------------------------------------------------------------------------
def test_unsupported_action_space_names_what_is_supported(tmp_path):
    """The helper module registers the env in-process before rl-run's main() starts."""
    import subprocess
    import sys

    from tests.conftest import cli_env

    code = ("import sys, tests.helpers.multidiscrete_env\n"
            "from rl_runner.cli import main\n"
            "sys.argv = ['rl-run'] + sys.argv[1:]\n"
            "main()\n")
    proc = subprocess.run(
        [sys.executable, "-c", code, "env=gym", f"env.id={MD_ENV_ID}", *FAST,
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=cli_env(REPO), capture_output=True, text=True, timeout=120)
    line = error_line(proc)
    assert_says(line, "cannot handle", "MultiDiscrete", "Box")


def test_module_qualified_gym_id_is_accepted(cli):
    line = error_line(cli(["env=gym", f"env.id={MD_MODULE_ENV_ID}", *FAST], pythonpath=REPO))
    # the id resolves; the run then stops at the action-space check, not at the id check
    assert_says(line, "cannot handle", "MultiDiscrete")


# ---- an existing run directory -----------------------------------------------------------------
@pytest.fixture(scope="module")
def second_run_into_finished_dir(finished_run, tmp_path_factory):
    """A copy of the finished run, then a second (different) run pointed at the same directory."""
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


def test_an_algo_target_that_cannot_be_imported_is_one_line(cli):
    line = error_line(cli(["algo._target_=no_such_module.Algo"]))
    assert_says(line, "algo._target_='no_such_module.Algo'", "cannot be imported")


@pytest.mark.parametrize("override, says", [
    ("algo.lr=${oc.env:RL_RUNNER_UNSET_VARIABLE}", "does not resolve"),
    ("algo.lr=${no.such.key}", "does not resolve"),
    ("algo.lr=nan", "finite"), ("algo.ent_coef=inf", "finite"),
    ("algo.hidden_sizes=[64,0]", "every entry must be positive"),
    ("+trainer.foo=1", "not a trainer key"), ("logger.flush_secs=-1", "must be positive"),
    ("trainer=fast", "unknown trainer"), ("algo.activation=foo", "cannot be built"),
    ("env.n_envs=5000", "more than 4096"),
])
def test_values_caught_before_any_run_dir(cli, tmp_path, override, says):
    line = error_line(cli([override], run_dir=tmp_path / "outputs" / "run"))
    assert says in line, line
    assert not (tmp_path / "outputs").exists()


def test_an_added_unknown_key_is_not_suggested_back(cli):
    line = error_line(cli(["+algo.foo=1"]))
    assert "did you mean algo.foo" not in line, line


def test_resume_of_an_unusable_saved_config_is_one_line(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    (run_dir / ".hydra" / "config.yaml").write_text("[1, 2, 3]\n")
    assert "not a config" in error_line(run_cli([f"resume={run_dir}"], tmp_path))
    assert "one value" in error_line(run_cli([f"resume={run_dir}",
                                              "trainer.total_steps=4096,8192"], tmp_path))
