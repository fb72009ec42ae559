"""`rl-run resume=<run dir>`: continue a run with the config its checkpoint was trained with.

The run's own .hydra/config.yaml is read only to check it: a hand edit, an `${oc.env:...}` whose
variable changed since, or any other difference outside trainer.* refuses the resume, naming the
keys. Only trainer.* may change on the command line."""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from rl_runner import rundir, searchpath
from rl_runner.checkpoint import load_checkpoint
from rl_runner.config import check_file_config, check_trainer, flatten
from rl_runner.errors import UserError, one_line
from rl_runner.renames import upgrade_config

CHANGEABLE = ("trainer.", "resume")  # what a resume may change; the rest is the checkpoint's


# characters that make Hydra's override grammar read a value as something else (a sweep, a list)
HYDRA_SPECIAL = set(",[]{}()'\"\\=$:")


def hydra_quote(value: str) -> str:
    """`value` as a quoted Hydra override value (paths with spaces, commas, brackets)."""
    return "'" + value.replace("'", "\\'") + "'"


def resume_value(run_dir: Path) -> str:
    """The value of resume= that names `run_dir` to Hydra: quoted where it has to be."""
    text = str(run_dir)
    return hydra_quote(text) if HYDRA_SPECIAL & set(text) else text


def resume_overrides(run_dir: Path, parsed: list, search: Sequence[str] = ()) -> list[str]:
    """Hydra overrides that make this invocation write into the run being resumed; the run
    directory is locked for this process first (a live run is refused, untouched). `search`:
    this command line's hydra.searchpath, whose algorithms the user chose to run."""
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
        if ov.is_sweep_override():
            raise UserError(f"resume continues one run: {key} takes one value here")
    if rundir.is_locked(run_dir):
        rundir.lock(run_dir)  # refuses with one line, naming the live process
    # refuse a drifted config, a class nobody trusted, bad trainer.* values: before anything
    # is written into the run (its train.log, its .lock)
    config = with_trainer_overrides(OmegaConf.create(trained_config(run_dir, search)), parsed)
    try:
        check_trainer(config)
    except UserError:
        raise
    except Exception as e:  # a config with parts missing: not what rl-run saves
        raise UserError(f"resume={run_dir}: the config in last.pt is incomplete "
                        f"({type(e).__name__}: {one_line(e, 160)})") from None
    rundir.lock(run_dir)
    # keep the run's .hydra/ untouched: nothing already written is overwritten
    return [f"hydra.run.dir={hydra_quote(str(run_dir))}", "hydra.output_subdir=null"]


_checked: dict[tuple, dict] = {}  # (run dir, search path) -> its trained config, checked once


def trained_config(run_dir: Path, search: Sequence[str] = ()) -> dict:
    """The resolved config last.pt was trained with, after checking that the run's
    .hydra/config.yaml still resolves to it outside trainer.*. rl-run checks it before Hydra
    starts (resume_overrides) and uses it in the job (resumed_config): read once."""
    key = (Path(run_dir).resolve(), tuple(search))
    if key not in _checked:
        _checked[key] = _check_trained_config(run_dir, search)
    return copy.deepcopy(_checked[key])


def _check_trained_config(run_dir: Path, search: Sequence[str]) -> dict:
    last = run_dir / "checkpoints" / "last.pt"
    # both files under today's key names: a resume saves last.pt with them beside the old .hydra/
    trained = upgrade_config(load_checkpoint(last, mmap=True).get("config"))
    if not isinstance(trained, dict):
        raise UserError(f"{last}: holds no run config to resume with")
    check_file_config(OmegaConf.create(trained), last, search)
    saved_path = run_dir / ".hydra" / "config.yaml"
    try:
        saved = upgrade_config(OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True))
    except Exception as e:  # unparsable YAML, an interpolation that no longer resolves
        raise UserError(f"resume={run_dir}: {saved_path} cannot be read or resolved "
                        f"({one_line(e, 200)})") from None
    if not isinstance(saved, dict):
        raise UserError(f"resume={run_dir}: {saved_path} is not a config (a YAML mapping)")
    differing = config_differences(trained, saved)
    if differing:
        shown = "; ".join(f"{k}: {a!r} in last.pt, {b!r} in .hydra/config.yaml"
                          for k, a, b in differing[:3])
        more = f" (and {len(differing) - 3} more)" if len(differing) > 3 else ""
        raise UserError(f"resume={run_dir}: the run's config changed since last.pt was saved: "
                        f"{shown}{more}; undo the change, or start a new run with it")
    return trained


def config_differences(trained: dict, saved: dict) -> list[tuple[str, object, object]]:
    """(key, value in the checkpoint, value now) for every key outside trainer.* that differs."""
    a, b = flatten(trained), flatten(saved)
    missing = object()
    return [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b))
            if not k.startswith(CHANGEABLE) and a.get(k, missing) != b.get(k, missing)]


def with_trainer_overrides(config: DictConfig, parsed: list) -> DictConfig:
    """`config` with the trainer.* overrides among `parsed` applied."""
    for ov in parsed:
        key = ov.get_key_element().lstrip("+~")
        if key.startswith("trainer."):
            OmegaConf.update(config, key, ov.value(), force_add=True)
    return config


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The config last.pt was trained with, with this call's trainer.* overrides."""
    run_dir = Path(cfg.resume)
    overrides = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    config = with_trainer_overrides(OmegaConf.create(trained_config(run_dir, searchpath.current())),
                                    overrides)
    config.resume = str(run_dir)
    return config
