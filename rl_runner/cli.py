"""Console entry points. `rl-run` checks its arguments, then hands over to Hydra."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from rl_runner.config import group_choices
from rl_runner.errors import UserError
from rl_runner.overrides import check_overrides, check_values

log = logging.getLogger("rl_runner")

# flags that make Hydra print something instead of running: passed through untouched
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--version",
              "--shell-completion", "-sc", "--resolve", "-p", "--package"}
FLAGS_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                    "--experimental-rerun"}
CHECKED_GROUPS = ("algo", "env", "hparams_search")
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
        raise UserError(f"cannot parse the overrides: {_one_line(e)}") from None
    for ov in parsed:
        key = ov.get_key_element().lstrip("+~")
        if key in CHECKED_GROUPS:
            choices = group_choices(key)
            values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [
                ov.get_value_element_as_str()]
            for value in values:
                if value not in choices:
                    raise UserError(f"unknown {key} {value!r}; choices: {', '.join(choices)}")
    _check_plugins(parsed, multirun)
    check_overrides(parsed, argv, multirun)
    resume = next((ov for ov in parsed if ov.get_key_element() == "resume"), None)
    if resume is not None and resume.value() not in (None, "null"):
        if multirun or resume.is_sweep_override():
            raise UserError("resume= continues one run; it cannot be part of a sweep (-m)")
        return argv + resume_overrides(Path(str(resume.value())), parsed)
    run_dir = next((ov for ov in parsed if ov.get_key_element() == "hydra.run.dir"), None)
    if run_dir is not None and not multirun:
        _check_fresh(Path(str(run_dir.value())))
    sweep_dir = next((ov for ov in parsed if ov.get_key_element() == "hydra.sweep.dir"), None)
    if sweep_dir is not None and multirun:
        _check_fresh_sweep(Path(str(sweep_dir.value())))
    _check_composes(parsed, overrides)
    return argv


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


def _check_fresh(run_dir: Path) -> None:
    """Refuse a run directory that already holds a run: Hydra would overwrite its .hydra/."""
    if (run_dir / "results.json").exists() or (run_dir / "checkpoints").exists():
        raise UserError(f"{run_dir} already holds a run; resume it with resume={run_dir} "
                        "or choose another hydra.run.dir")


def _check_fresh_sweep(sweep_dir: Path) -> None:
    """Refuse a sweep directory that already holds a sweep: its jobs would be overwritten."""
    if sweep_dir.is_dir() and any(sweep_dir.iterdir()):
        raise UserError(f"hydra.sweep.dir={sweep_dir} already holds files (an earlier sweep?); "
                        "choose another, or leave hydra.sweep.dir out for a new dated one")


def resume_overrides(run_dir: Path, parsed: list) -> list[str]:
    """Hydra overrides that make this invocation write into the run being resumed."""
    if not run_dir.is_dir():
        raise UserError(f"resume={run_dir}: no such run directory")
    if not (run_dir / ".hydra" / "config.yaml").is_file():
        raise UserError(f"resume={run_dir}: no .hydra/config.yaml there (not an rl-run directory)")
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        runs = sorted(p.name for p in run_dir.glob("s*") if (p / "checkpoints").is_dir())
        if runs:  # a repeats=N job: its runs resume one by one
            raise UserError(f"resume={run_dir}: a job of several runs ({', '.join(runs)}); "
                            f"resume one of them, e.g. resume={run_dir / runs[-1]}")
        raise UserError(f"resume={run_dir}: no checkpoints/last.pt to resume from")
    for ov in parsed:
        key = ov.get_key_element().lstrip("+~")
        if key != "resume" and not key.startswith(("trainer.", "hydra.")):
            raise UserError(f"resume takes the run's saved config; only trainer.* may be "
                            f"overridden, not {key}")
    # keep the run's .hydra/ untouched: nothing already written is overwritten
    return [f"hydra.run.dir={run_dir}", "hydra.output_subdir=null"]


def _check_composes(parsed: list, overrides: list[str]) -> None:
    """Compose the config once per swept value and check its values, so errors show before any
    job starts and before any run directory exists."""
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
        for trial in trials:
            try:
                cfg = compose(config_name="train", overrides=trial)
            except Exception as e:
                raise UserError(_one_line(e)) from None
            check_values(cfg)  # the trainer's checks, before Hydra makes a run directory


def _one_line(e: Exception) -> str:
    return " ".join(str(e).replace("\t", " ").split())


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The saved config of the run in `cfg.resume`, with this call's trainer.* overrides."""
    run_dir = Path(cfg.resume)
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    for ov in OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task)):
        key = ov.get_key_element().lstrip("+~")
        if key.startswith("trainer."):
            OmegaConf.update(saved, key, ov.value(), force_add=True)
    saved.resume = str(run_dir)
    return saved


@hydra.main(config_path="pkg://rl_runner.conf", config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> float:
    """One Hydra job: train, and return the final eval return (what a sweeper optimizes)."""
    from rl_runner.jobs import run_job

    try:
        resume = cfg.get("resume") is not None
        if resume:
            cfg = resumed_config(cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        results = run_job(cfg, run_dir, resume)
    except UserError as e:
        log.error("rl-run: error: %s", e)
        sys.exit(2)
    except KeyboardInterrupt:
        log.error("interrupted; checkpoints/last.pt holds the last saved state")
        sys.exit(130)
    # what a sweeper (Optuna) maximises; a failed job in a sweep gives NaN (jobs.run_job)
    value = results["eval_return_mean"]
    return float("nan") if value is None else value


def main() -> None:
    """`rl-run`: Hydra's CLI, with bad input reported as one line and exit code 2."""
    try:
        argv = prepare_argv(sys.argv[1:])
    except UserError as e:
        fail(str(e))
    sys.argv = [sys.argv[0], *argv]
    hydra_main()


if __name__ == "__main__":
    main()
