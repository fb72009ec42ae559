"""Console entry points. `rl-run` checks its arguments, then hands over to Hydra."""
from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from rl_runner import rundir, runlog, searchpath
from rl_runner.config import group_choices
from rl_runner.errors import UserError, one_line
from rl_runner.fileio import writing
from rl_runner.overrides import check_jobs, check_overrides
from rl_runner.resume import hydra_quote, resume_overrides, resumed_config
from rl_runner.threads import set_threads

log = logging.getLogger("rl_runner")

# flags that make Hydra print something instead of running: passed through untouched
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--version",
              "--shell-completion", "-sc", "--resolve", "-p", "--package"}
FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                    "--experimental-rerun"}
CHECKED_GROUPS = ("algo", "env", "hparams_search", "trainer", "logger")
# sweep plugins: (override key, value prefix) -> (module, the extra that installs it)
PLUGINS = {("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "joblib"),
           ("hydra/launcher", "ray"): ("hydra_plugins.hydra_ray_launcher", "ray"),
           ("hydra/launcher", "submitit"): ("hydra_plugins.hydra_submitit_launcher", "submitit"),
           ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
           ("hparams_search", ""): ("hydra_plugins.hydra_optuna_sweeper", "optuna")}


def fail(message: str) -> None:
    print(f"rl-run: error: {message}", file=sys.stderr)
    sys.exit(2)


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """(flags with their values, overrides)."""
    flags, overrides = [], []
    args = iter(argv)
    for arg in args:
        if arg.startswith("-"):
            flags.append(arg)
            if arg in FLAGS_WITH_VALUE:
                flags.append(next(args, ""))
        else:
            overrides.append(arg)
    return flags, overrides


def prepare_argv(argv: list[str]) -> list[str]:
    """Check the overrides Hydra would otherwise reject with a traceback-like page; set up resume.

    Raises UserError with one line for anything wrong.
    """
    flags, overrides = split_argv(argv)
    if any(f in INFO_FLAGS for f in flags):
        return argv
    multirun = "-m" in flags or "--multirun" in flags
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        raise UserError(f"cannot parse the overrides: {one_line(e)}") from None
    entries = searchpath.from_overrides(parsed)
    for ov in parsed:
        key = ov.get_key_element().lstrip("+~")
        if key in CHECKED_GROUPS:
            choices = group_choices(key, entries)
            for value in _group_values(ov):
                if value not in choices:
                    raise UserError(f"unknown {key} {value!r}; choices: {', '.join(choices)}")
    _check_plugins(parsed, multirun)
    check_overrides(parsed, argv, multirun)
    resume = next((ov for ov in parsed if ov.get_key_element() == "resume"), None)
    if resume is not None and resume.value() not in (None, "null"):
        if multirun or resume.is_sweep_override():
            raise UserError("resume= continues one run; it cannot be part of a sweep (-m)")
        return argv + resume_overrides(Path(str(resume.value())), parsed, entries)
    sweep_dir = next((ov for ov in parsed if ov.get_key_element() == "hydra.sweep.dir"), None)
    if sweep_dir is not None and multirun:
        _check_fresh_sweep(Path(str(sweep_dir.value())))
    _check_composes(parsed, overrides)
    return claim_output_dir(argv, parsed, overrides, multirun)


def _group_values(ov) -> list[str]:
    """The options an override picks: one, each of a sweep, each of a list (logger=[a,b])."""
    if not ov.is_sweep_override() and not isinstance(ov.value(), list):
        return [ov.get_value_element_as_str()]
    try:
        values = list(ov.sweep_iterator()) if ov.is_sweep_override() else [ov.value()]
    except Exception:  # range/interval sweeps over a group: left to the sweeper
        return []
    return ["null" if v is None else str(v) for value in values
            for v in (value if isinstance(value, list) else [value])]


def claim_output_dir(argv: list[str], parsed: list, overrides: list[str],
                     multirun: bool) -> list[str]:
    """`argv` with the run (or sweep) directory made, locked and named explicitly.

    A default directory is made new even when another launch took the same name in the same
    second (rl_runner/rundir.py); a directory named on the command line is refused when it
    already holds a run or a live process holds it."""
    from hydra import compose, initialize_config_module

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    for p in parsed:
        # a number or a bool is a fine name (hydra.run.dir=nan); several values or a list are not
        if p.get_key_element() == key and (p.is_sweep_override()
                                           or isinstance(p.value(), (list, dict))):
            raise UserError(f"{key} takes one path, not several values; quote a path with "
                            f"commas or brackets: {key}='<path>'")
    fixed = [o for o, p in zip(overrides, parsed) if not p.is_sweep_override()]
    with initialize_config_module(config_module="rl_runner.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=fixed, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # the `hydra:` resolver in the directory name
        try:
            folder = Path(str(OmegaConf.select(cfg, key)))
        except Exception as e:
            raise UserError(f"{key} cannot be resolved: {one_line(e)}") from None
    explicit = any(p.get_key_element() == key for p in parsed)
    if not explicit:
        folder = rundir.claim_new(folder)
    elif multirun:  # checked to be new or empty (_check_fresh_sweep); again once locked, since
        with writing(folder):  # a sweep may have been writing into it until just now
            folder.mkdir(parents=True, exist_ok=True)
        rundir.lock(folder)
        if rundir.holds_something(folder):
            rundir.release(folder)
            _check_fresh_sweep(folder)
    else:
        rundir.claim_explicit(folder)
    rest = [a for a, p in zip(overrides, parsed) if p.get_key_element() != key]
    return [*split_argv(argv)[0], *rest, f"{key}={hydra_quote(str(folder))}"]


def _check_plugins(parsed: list, multirun: bool) -> None:
    """A launcher or sweeper that is not installed: say which extra brings it."""
    import importlib.util

    for ov in parsed:
        key, value = ov.get_key_element().lstrip("+~"), str(ov.value())
        for (plugin_key, prefix), (module, extra) in PLUGINS.items():
            if key != plugin_key or not value.startswith(prefix) or value == "None":
                continue
            if importlib.util.find_spec(module) is None:
                raise UserError(f"{key}={value} needs the {extra} extra: "
                                f"pip install -c constraints.txt 'rl-runner[{extra}]'")
            if not multirun:
                raise UserError(f"{key}={value} runs a sweep; add -m (rl-run -m {key}={value} ...)")


def _check_fresh_sweep(sweep_dir: Path) -> None:
    """Refuse a sweep directory that already holds a sweep: its jobs would be overwritten."""
    if sweep_dir.is_dir() and any(sweep_dir.iterdir()):
        raise UserError(f"hydra.sweep.dir={sweep_dir} already holds files (an earlier sweep?); "
                        "choose another, or leave hydra.sweep.dir out for a new dated one")


def _check_composes(parsed: list, overrides: list[str]) -> None:
    """Compose the config once per swept value, then run the trainer's checks on the jobs'
    configs (refused when every job would fail), so errors show before any job starts and
    before any run directory exists."""
    from hydra import compose, initialize_config_module

    fixed = [o for o, p in zip(overrides, parsed) if not p.is_sweep_override()]
    trials = [fixed]
    for p in parsed:
        if p.is_sweep_override() and not p.is_hydra_override():
            key = p.get_key_element()
            try:
                values = list(p.sweep_string_iterator())
            except Exception:  # range/interval sweeps are left to the sweeper
                continue
            trials += [fixed + [f"{key}={v}"] for v in values]
    with initialize_config_module(config_module="rl_runner.conf", version_base="1.3"):
        for i, trial in enumerate(trials):
            try:
                cfg = compose(config_name="train", overrides=trial, return_hydra_config=i == 0)
            except Exception as e:
                raise UserError(one_line(e)) from None
            if i == 0:  # as in a job: its hydra.searchpath names plugin algos in messages
                HydraConfig.instance().set_config(cfg)
        check_jobs(parsed, overrides)  # the trainer's checks, before Hydra makes a run directory


@hydra.main(config_path="pkg://rl_runner.conf", config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    """One Hydra job: train, and return the final eval return (what a sweeper optimizes)."""
    from rl_runner.jobs import run_job
    from rl_runner.sweeps import in_multirun

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        resume = cfg.get("resume") is not None
        if in_multirun():  # a sweep's job: its directory is new inside the sweep's locked one
            rundir.lock(run_dir)
        if resume:
            if not in_multirun():  # train.log gets nothing until the trainer accepts the resume
                runlog.hold(run_dir / "train.log")
            cfg = resumed_config(cfg)
        results = run_job(cfg, run_dir, resume)
    except UserError as e:
        if resume:
            runlog.drop()
        log.error("rl-run: error: %s", e)
        if not resume:
            rundir.remove_stub(run_dir)
        sys.exit(2)
    except Exception:  # a bug: its traceback shows; a run that never trained leaves no stub
        if not resume:
            rundir.remove_stub(run_dir)
        raise
    except KeyboardInterrupt:
        log.error("interrupted; checkpoints/last.pt holds the last saved state")
        sys.exit(130)
    if results.get("status") == "interrupted" and not in_multirun():
        # like any interrupted command: `rl-run ... && next` must not carry on
        sys.exit(128 + signal.Signals[results.get("signal") or "SIGINT"].value)
    # what a sweeper (Optuna) maximises; a failed job in a sweep gives NaN (jobs.run_job)
    value = results["eval_return_mean"]
    return float("nan") if value is None else value


def help_entries(argv: list[str]) -> list[str]:
    """The hydra.searchpath entries of an `rl-run --help ...` command line ([] for any other)."""
    flags, overrides = split_argv(argv)
    if not {"--help", "-h"} & set(flags):
        return []
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # Hydra reports it
        return []
    return searchpath.from_overrides(parsed)


def print_help(argv: list[str], entries: list[str]) -> None:
    """Hydra's --help, with the config groups on `entries` listed too: Hydra lists the groups of
    its start-up search path only (hydra.searchpath reaches composition, not that list), so the
    search path is built as hydra.main builds it, plus the entries (as --config-dir adds one)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path, get_args_parser
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    path = create_config_search_path("pkg://rl_runner.conf")
    for entry in entries:
        path.prepend("hydra.searchpath in command-line", entry, SearchPathQuery(provider="schema"))
    parser = get_args_parser()
    args = parser.parse_args(argv)
    try:
        Hydra.create_main_hydra2(task_name="train", config_search_path=path).app_help(
            config_name="train", args_parser=parser, args=args)
    except Exception as e:
        fail(one_line(e))
    finally:
        GlobalHydra.instance().clear()


def main() -> None:
    """`rl-run`: Hydra's CLI, with bad input reported as one line and exit code 2."""
    # this process's own torch work (the checks build the algorithm) runs on one thread: an
    # OpenMP team started here would hang a sweep job forked from it (libgomp is not
    # fork-safe) at its first product on several threads. A run sets its own count.
    set_threads(1)
    try:
        argv = prepare_argv(sys.argv[1:])
        entries = help_entries(argv)
    except UserError as e:
        fail(str(e))
    if entries:
        print_help(argv, entries)
        return
    sys.argv = [sys.argv[0], *argv]
    hydra_main()


if __name__ == "__main__":
    main()
