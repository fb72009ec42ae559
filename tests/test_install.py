"""Hydra finds the bundled configs in both install modes, from any working directory."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, cli_env, run_cli

WHEEL_CONFIGS = ("rl_runner/conf/__init__.py", "rl_runner/conf/train.yaml",
                 "rl_runner/conf/algo/ppo.yaml", "rl_runner/conf/algo/pg.yaml",
                 "rl_runner/conf/env/cartpole.yaml", "rl_runner/conf/env/gym.yaml",
                 "rl_runner/conf/tuned/ppo_cartpole.yaml", "rl_runner/conf/trainer/default.yaml",
                 "rl_runner/conf/logger/tensorboard.yaml",
                 "rl_runner/conf/hydra/job_logging/rl_runner.yaml")


def test_editable_install_finds_configs_from_another_directory(tmp_path):
    assert not (tmp_path / "conf").exists()
    proc = run_cli(["--cfg", "job", "algo=pg", "env=pendulum"], tmp_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["algo"]["_target_"] == "rl_runner.algos.pg.PolicyGradient"
    assert printed["env"]["id"] == "Pendulum-v1"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source tree (the checkout itself stays untouched)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("rl_runner", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", "-w", str(base / "dist"), str(src)],
                          cwd=base, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    wheels = list((base / "dist").glob("rl_runner-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.integration  # builds a wheel with pip
def test_wheel_carries_the_yaml(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [n for n in WHEEL_CONFIGS if n not in names]
    assert not missing
    # every YAML of the source conf/ tree is in the wheel
    for path in (REPO / "conf").rglob("*.yaml"):
        assert f"rl_runner/conf/{path.relative_to(REPO / 'conf').as_posix()}" in names, path
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "rl-run = rl_runner.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


@pytest.mark.integration  # builds a wheel with pip
def test_non_editable_install_finds_configs(wheel, tmp_path):
    """The unpacked wheel first on the path, no site processing (so the dev venv's editable
    finder never loads), the dev venv's site-packages last for torch/hydra/gymnasium."""
    target = tmp_path / "installed"
    zipfile.ZipFile(wheel).extractall(target)
    work = tmp_path / "elsewhere"
    work.mkdir()
    run_dir = tmp_path / "run"
    code = ("import json, sys\n"
            "import rl_runner.cli, rl_runner.conf\n"
            "print(json.dumps({'conf': rl_runner.conf.__file__, 'cli': rl_runner.cli.__file__}))\n"
            "sys.argv = ['rl-run'] + sys.argv[1:]\n"
            "rl_runner.cli.main()\n")
    env = cli_env()
    env["PYTHONPATH"] = f"{target}:{sysconfig.get_paths()['purelib']}"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-S", "-c", code, *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=180)

    proc = run("--cfg", "job", "algo=pg", "env=pendulum")
    assert proc.returncode == 0, proc.stderr
    first, rest = proc.stdout.split("\n", 1)
    where = json.loads(first)
    for path in where.values():
        assert Path(path).resolve().is_relative_to(target.resolve()), where
    printed = yaml.safe_load(rest)
    assert printed["algo"]["_target_"] == "rl_runner.algos.pg.PolicyGradient"
    assert printed["env"]["id"] == "Pendulum-v1"

    # a real (tiny) run: the hydra/job_logging override and the tuned preset come from the wheel
    proc = run("algo=ppo", "env=cartpole", "trainer.progress=false", "trainer.eval_episodes=1",
               "trainer.total_steps=256", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "train.log").read_text().strip()
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["algo"]["n_steps"] == 32  # tuned/ppo_cartpole.yaml was applied
    assert json.loads((run_dir / "results.json").read_text())["status"] == "completed"


@pytest.mark.integration  # builds a wheel and an editable wheel with setuptools
@pytest.mark.parametrize("hook", ["build_wheel", "build_editable"])
def test_building_prints_no_package_warnings(tmp_path, hook):
    """Every conf/ folder is declared as a package (pyproject.toml): setuptools builds without its
    'Package would be ignored' warning, one page per undeclared folder (~300 lines in all)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("rl_runner", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    proc = subprocess.run([sys.executable, "-c", "import sys, setuptools.build_meta as b; "
                           "getattr(b, sys.argv[1])(sys.argv[2])", hook, str(tmp_path / "dist")],
                          cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    assert "would be ignored" not in output and "absent from the `packages`" not in output, \
        "\n".join(line for line in output.splitlines() if "absent from" in line)
