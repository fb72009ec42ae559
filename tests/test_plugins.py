"""An algorithm from the user's own package (examples/plugin/mypkg), found through Hydra's
hydra.searchpath: trained, listed, checked and resumed like a bundled one."""
from __future__ import annotations

import shutil
import sys

import pytest
from omegaconf import OmegaConf

from rl_runner.cli import prepare_argv
from rl_runner.config import check_file_config
from rl_runner.errors import UserError
from tests.conftest import FAST, REPO, error_line, read_results, run_cli

STEPS = ["algo=myalgo", "env=cartpole", *FAST, "algo.n_steps=32"]


@pytest.fixture
def plugin(tmp_path):
    """examples/plugin/mypkg copied into tmp_path; returns (tmp_path, {scheme: searchpath=})."""
    shutil.copytree(REPO / "examples" / "plugin" / "mypkg", tmp_path / "mypkg")
    paths = {"file": f"hydra.searchpath=[file://{tmp_path / 'mypkg' / 'conf'}]",
             "pkg": "hydra.searchpath=[pkg://mypkg.conf]"}
    yield tmp_path, paths
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]  # the in-process tests import it from this tmp_path


@pytest.mark.parametrize("scheme", ["file", "pkg"])
def test_a_plugin_algorithm_trains(plugin, scheme):
    tmp, paths = plugin
    proc = run_cli([*STEPS, paths[scheme], "trainer.total_steps=512"], tmp, pythonpath=tmp)
    assert proc.returncode == 0, proc.stderr
    results = read_results(tmp / "run")
    assert (results["status"], results["algo"], results["env_steps"]) == ("completed", "myalgo",
                                                                          512)
    assert results["grad_steps"] == 512 // (32 * 8)  # env.n_envs=8 for cartpole


def test_help_lists_the_plugin_algorithm(plugin):
    tmp, paths = plugin
    proc = run_cli(["--help", paths["pkg"]], tmp, pythonpath=tmp)
    assert proc.returncode == 0, proc.stderr
    algo_line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("algo:"))
    assert {"myalgo", "ppo"} <= set(algo_line[len("algo:"):].replace(",", " ").split())


def test_an_unknown_algo_lists_the_plugin_ones_too(plugin):
    tmp, paths = plugin
    line = error_line(run_cli(["algo=nosuch", "env=cartpole", paths["file"]], tmp,
                              pythonpath=tmp))
    assert "unknown algo 'nosuch'" in line and "myalgo" in line and "ppo" in line


def test_a_plugin_yaml_key_the_constructor_lacks_is_refused(plugin):
    tmp, paths = plugin
    (tmp / "mypkg" / "conf" / "algo" / "badalgo.yaml").write_text(
        "_target_: mypkg.algo.MyAlgo\nlr: 0.01\nclip_coef: 0.2\n")
    line = error_line(run_cli(["algo=badalgo", "env=cartpole", paths["pkg"]], tmp,
                              pythonpath=tmp))
    assert "algo.clip_coef" in line and "myalgo" in line
    assert not (tmp / "run").exists()


def test_resume_trusts_the_algorithms_on_this_command_lines_search_path(plugin):
    tmp, paths = plugin
    first = run_cli([*STEPS, paths["pkg"], "trainer.total_steps=512"], tmp, pythonpath=tmp)
    assert first.returncode == 0, first.stderr
    run_dir = tmp / "run"
    refused = error_line(run_cli([f"resume={run_dir}", "trainer.total_steps=1024"], tmp,
                                 pythonpath=tmp))
    assert "mypkg.algo.MyAlgo" in refused and "hydra.searchpath" in refused
    more = run_cli([f"resume={run_dir}", "trainer.total_steps=1024", paths["file"]], tmp,
                   pythonpath=tmp)
    assert more.returncode == 0, more.stderr
    results = read_results(run_dir)
    assert (results["status"], results["env_steps"]) == ("completed", 1024)


def test_check_file_config_trusts_only_the_given_search_path(plugin, monkeypatch):
    tmp, paths = plugin
    monkeypatch.syspath_prepend(str(tmp))
    monkeypatch.delenv("RL_RUNNER_TRUSTED", raising=False)
    cfg = OmegaConf.create({"algo": {"_target_": "mypkg.algo.MyAlgo"}, "env": {"id": "CartPole-v1"}})
    with pytest.raises(UserError, match="RL_RUNNER_TRUSTED=mypkg.algo.MyAlgo"):
        check_file_config(cfg, "last.pt")
    check_file_config(cfg, "last.pt", ["pkg://mypkg.conf"])
    check_file_config(cfg, "last.pt", [f"file://{tmp / 'mypkg' / 'conf'}"])


@pytest.mark.parametrize("entry, why", [("pkg://nosuch_pkg.conf", "not an importable package"),
                                        ("file:///no/such/folder", "not a folder")])
def test_a_search_path_entry_that_cannot_be_read_is_refused(entry, why):
    with pytest.raises(UserError, match=why):
        prepare_argv(["algo=ppo", f"hydra.searchpath=[{entry}]"])


def test_a_list_of_group_options_is_checked_option_by_option():
    with pytest.raises(UserError, match="unknown logger 'nosuch'; choices: .*tensorboard"):
        prepare_argv(["logger=[tensorboard,nosuch]"])
    with pytest.raises(UserError, match="unknown logger 'nosuch'"):
        prepare_argv(["-m", "logger=[tensorboard],[nosuch]"])


def test_the_readme_example_is_the_plugin_that_trains():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Adding an algorithm"):]
    listing = section[section.index("```python\n") + 10:]
    listing = listing[:listing.index("```\n")]
    assert listing == (REPO / "examples" / "plugin" / "mypkg" / "algo.py").read_text()
    yaml_block = section[section.index("```yaml\n") + 8:]
    assert yaml_block[:yaml_block.index("```\n")] == \
        (REPO / "examples/plugin/mypkg/conf/algo/myalgo.yaml").read_text()
