"""Checkpoint files: a plain dict of tensors and plain containers, written atomically and read
back with `torch.load(weights_only=True)`, so that loading a file never runs code from it."""
from __future__ import annotations

import math
import random
import zipfile
from pathlib import Path

import numpy as np
import torch

from rl_runner.errors import UserError
from rl_runner.fileio import write_atomic_with

# 2: numpy arrays stored as tagged tensors, env state as plain data (no pickle anywhere).
# 1 (up to 2026-12): numpy arrays pickled as numpy objects and the env state as pickled bytes.
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
NDARRAY = "__ndarray__"  # {NDARRAY: tensor}: a numpy array, given back as one on load
NPSCALAR = "__npscalar__"  # {NPSCALAR: 0-d tensor}: a numpy scalar (np.float64, ...), likewise
# what a format-1 file may hold beside tensors: numpy arrays and their dtypes, nothing else
# (numpy's array reconstruction builds plain data; the weights_only unpickler still refuses any
# other global, so no constructor of the file's choosing runs)
LEGACY_NUMPY_GLOBALS = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
                        "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
                        "numpy.ndarray", "numpy.dtype")


PLAIN = (torch.Tensor, bool, int, float, str, type(None))


def encode(tree, where: str = "state"):
    """`tree` with numpy arrays and scalars as tagged tensors; a TypeError naming `where` for
    anything that is not plain data (torch.load(weights_only=True) would refuse the file)."""
    if isinstance(tree, (np.ndarray, np.generic)):
        if tree.dtype.kind not in "biufc":
            raise TypeError(f"{where} is a numpy array of dtype {tree.dtype}, not a number")
        tag = NDARRAY if isinstance(tree, np.ndarray) else NPSCALAR
        return {tag: torch.from_numpy(np.array(tree, copy=True, order="C"))}
    if isinstance(tree, dict):
        bad = next((k for k in tree if not isinstance(k, (str, int))), None)
        if bad is not None:
            raise TypeError(f"{where} has a key of type {type(bad).__name__}")
        return {k: encode(v, f"{where}.{k}") for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(encode(v, f"{where}.{i}") for i, v in enumerate(tree))
    if not isinstance(tree, PLAIN):
        raise TypeError(f"{where} is a {type(tree).__module__}.{type(tree).__qualname__}")
    if isinstance(tree, torch.Tensor):  # a GPU run's files hold CPU tensors, like any other's
        return tree.detach().cpu()
    return tree


def decode(tree):
    """The inverse of `encode`: tagged tensors become numpy arrays again."""
    if isinstance(tree, dict):
        if set(tree) == {NDARRAY} and isinstance(tree[NDARRAY], torch.Tensor):
            return tree[NDARRAY].numpy()
        if set(tree) == {NPSCALAR} and isinstance(tree[NPSCALAR], torch.Tensor):
            return tree[NPSCALAR].numpy()[()]
        return {k: decode(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(decode(v) for v in tree)
    return tree


def misfit(reference, got, path: str = "") -> str | None:
    """Where `got` (a state loaded from a file) differs in structure from `reference` (the same
    state of freshly built objects): other keys, types, tensor shapes or dtypes; None if it fits.

    Lists may differ in length (their items are checked against the reference's first), a dict
    that is empty in the reference (an optimizer's state before its first step) takes any keys,
    and None stands for anything on either side (a value not set yet)."""
    where = path.rstrip(".") or "the state"
    if reference is None or got is None:
        return None
    if isinstance(reference, dict):
        if not isinstance(got, dict):
            return f"{where} is a {type(got).__name__}, not a dict"
        if not reference:
            return None
        if set(got) != set(reference):
            extra, lacking = set(got) - set(reference), set(reference) - set(got)
            return f"{where} " + (f"lacks {sorted(map(str, lacking))[:3]}" if lacking else
                                  f"has unknown {sorted(map(str, extra))[:3]}")
        return next((m for k in reference
                     if (m := misfit(reference[k], got[k], f"{path}{k}.")) is not None), None)
    if isinstance(reference, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return f"{where} is a {type(got).__name__}, not a list"
        pairs = zip(reference, got) if len(got) == len(reference) else \
            ((reference[0], g) for g in got) if reference else ()
        return next((m for i, (r, g) in enumerate(pairs)
                     if (m := misfit(r, g, f"{path}{i}.")) is not None), None)
    if isinstance(got, np.ndarray) and got.shape == () and isinstance(reference, np.generic):
        got = got[()]  # a 0-d array and a numpy scalar are the same state (running means)
    if isinstance(reference, np.ndarray) and reference.shape == () and isinstance(got, np.generic):
        got = np.asarray(got)
    if isinstance(reference, (torch.Tensor, np.ndarray)):
        if type(got) is not type(reference) or got.shape != reference.shape \
                or got.dtype != reference.dtype:
            shown = f"{type(got).__name__} {tuple(getattr(got, 'shape', ()))} " \
                    f"{getattr(got, 'dtype', '')}"
            return (f"{where} is {shown.strip()}, not {type(reference).__name__} "
                    f"{tuple(reference.shape)} {reference.dtype}")
        return None
    if isinstance(reference, bool):
        allowed: tuple = (bool, np.bool_)
    elif isinstance(reference, int):
        allowed = (int, np.integer)
    elif isinstance(reference, float):
        allowed = (float, int, np.floating, np.integer)
    elif isinstance(reference, (str, np.generic)):
        allowed = (str,) if isinstance(reference, str) else (np.generic,)
    else:
        return None
    if isinstance(got, bool) and not isinstance(reference, (bool, np.bool_)) \
            or not isinstance(got, allowed):
        return f"{where} is {type(got).__name__} {got!r:.40}, not {type(reference).__name__}"
    return None


def nonfinite_paths(tree, prefix: str = "") -> list[str]:
    """Where `tree` (a state dict) holds NaN or Inf in a tensor, array or number: "net.w1", ..."""
    if isinstance(tree, torch.Tensor):
        bad = (tree.is_floating_point() or tree.is_complex()) and not bool(torch.isfinite(tree).all())
    elif isinstance(tree, np.ndarray):
        bad = tree.dtype.kind in "fc" and not bool(np.isfinite(tree).all())
    elif isinstance(tree, float):
        bad = not math.isfinite(tree)
    elif isinstance(tree, dict):
        return [p for k, v in tree.items() for p in nonfinite_paths(v, f"{prefix}{k}.")]
    elif isinstance(tree, (list, tuple)):
        return [p for i, v in enumerate(tree) for p in nonfinite_paths(v, f"{prefix}{i}.")]
    else:
        bad = False
    return [prefix.rstrip(".") or "value"] if bad else []


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a per-process temp file, then rename: a kill never leaves a torn file, and
    a full disk leaves the earlier file as it was (one line naming the path)."""
    try:
        data = encode({"format_version": FORMAT_VERSION, **state}, "")
    except TypeError as e:  # an algorithm's state_dict holding an object: refused before saving
        raise UserError(f"cannot save {path}: {str(e).lstrip('.')}, not plain data (a checkpoint "
                        "holds tensors, numpy arrays, numbers, strings, lists and dicts only)") \
            from None

    def write(tmp: Path) -> None:
        # a file object, not a path: torch then raises the disk's own OSError (with a path it
        # wraps it in a RuntimeError) and the `with` closes the file, giving back its space
        with open(tmp, "wb") as f:
            torch.save(data, f)

    write_atomic_with(Path(path), write)


def load_checkpoint(path: Path, mmap: bool = False) -> dict:
    """A checkpoint's dict, loaded without running any code from the file; or a UserError.

    mmap: map the tensors instead of reading them (a look at the config of a big checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint there")
    if not zipfile.is_zipfile(path):  # torch.save's format; anything else is not ours
        raise UserError(f"{path}: not an rl-runner checkpoint (not a torch zip file)")
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception as e:  # torn, truncated
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    foreign = sorted(set(unsafe) - set(LEGACY_NUMPY_GLOBALS))
    if foreign:
        raise UserError(f"{path}: refused, it holds pickled objects ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}); rl-runner checkpoints hold "
                        "tensors and plain data only, and loading objects would run code")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals(unsafe) if unsafe else []):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # torn, truncated or refused by the weights_only unpickler
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__})") from None
    version = state.get("format_version") if isinstance(state, dict) else None
    if not isinstance(version, int) or isinstance(version, bool):
        raise UserError(f"{path}: not an rl-runner checkpoint")
    if state["format_version"] not in READABLE_FORMATS:
        raise UserError(f"{path}: checkpoint format {state['format_version']} is not supported "
                        f"(this rl-runner reads formats {', '.join(map(str, READABLE_FORMATS))})")
    for key in ("algo", "counters", "config", "env", "rng", "feeder"):
        if key in state and not isinstance(state[key], dict):
            raise UserError(f"{path}: not an rl-runner checkpoint ({key} is not a dict)")
    try:
        return decode(state)
    except (TypeError, RuntimeError, ValueError) as e:  # e.g. a tag on a tensor numpy lacks
        raise UserError(f"{path}: not an rl-runner checkpoint ({type(e).__name__}: {e})") from None


def _legacy_numpy_globals(names: list[str]) -> list:
    """The numpy callables a format-1 file names, resolved for torch's safe_globals, and the
    numeric dtype classes its arrays are built with (numpy.dtypes.Float32DType, ...; not the
    object or string dtypes)."""
    import importlib

    found = [np.dtype(c).__class__ for c in np.typecodes["All"] if np.dtype(c).kind in "biufc"]
    for name in names:
        module, _, attr = name.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), attr))
        except (ImportError, AttributeError):
            pass
    return found


CUDA_RNG = "cuda"  # rng[CUDA_RNG]: one generator state per CUDA device, saved by GPU runs only


def rng_state() -> dict:
    """The global generators' states: python, numpy, torch's CPU one and, where this process
    has used CUDA, one per CUDA device (a CPU run never initialises CUDA to save them: its CUDA
    generators drew nothing since their seeding)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state[CUDA_RNG] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back what rng_state saved. CUDA states go to the devices there are (a GPU run resumed
    on a CPU-only machine ignores them; a CPU run resumed on a GPU one seeds CUDA afresh)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get(CUDA_RNG) or []
    if cuda and torch.cuda.is_available():
        for index, device_state in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state, index)  # lazy: CUDA starts when first used


def portable_rng(state):
    """An rng state without its CUDA part (which depends on the machine, not on the run): what
    a resume compares with this run's own."""
    return {k: v for k, v in state.items() if k != CUDA_RNG} if isinstance(state, dict) else state


def cuda_rng_misfit(state) -> str | None:
    """What is wrong with a checkpoint's CUDA generator states (a list of byte tensors), or None
    where they are absent or fit."""
    cuda = state.get(CUDA_RNG) if isinstance(state, dict) else None
    if cuda is None:
        return None
    if not (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                                           and t.dim() == 1 for t in cuda)):
        return f"rng.{CUDA_RNG} is not a list of CUDA generator states (byte tensors)"
    return None


def seed_everything(seed: int) -> None:
    """python, numpy and torch's generators; torch.manual_seed seeds every CUDA device too
    (lazily, where CUDA has not started yet)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
