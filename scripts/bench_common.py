"""Shared by the benchmark scripts: one `rl-run` as a subprocess, and the marked sections of
docs/benchmarks.md (<!-- name:start --> ... <!-- name:end -->)."""
from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

RL_RUN = Path(sys.executable).with_name("rl-run")


def rl_run(args: list[str], run_dir: Path, label: str) -> dict:
    """`rl-run ARGS` quietly into run_dir; its results.json, or {"status": "failed", "error"}."""
    cmd = [str(RL_RUN), *args, "trainer.progress=false", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        error = proc.stderr.strip()[-300:]
        print(f"{label} failed: {error}", flush=True)
        return {"status": "failed", "error": error}
    result = json.loads((Path(run_dir) / "results.json").read_text())
    print(f"{label}: {result['eval_return_mean']:.1f} after {result['env_steps']} steps, "
          f"{result['wall_seconds']:.0f} s", flush=True)
    return result


def run_logged(cmd: list[str], log: Path, cwd: Path | None = None) -> tuple[float, str | None]:
    """Run `cmd` with its output in `log`; (wall seconds, None or the reason it failed)."""
    start = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd).returncode
    seconds = time.perf_counter() - start
    if rc == 0:
        return seconds, None
    tail = log.read_text().strip().splitlines()[-15:]
    return seconds, f"exit code {rc}: " + " | ".join(tail)


def timed_rl_run(args: list[str], log: Path) -> float:
    """Wall seconds of `rl-run ARGS` (its output in `log`); exits the script when it fails."""
    seconds, error = run_logged([str(RL_RUN), *args], log)
    if error:
        sys.exit(f"rl-run {shlex.join(args)} failed ({error}); see {log}")
    return seconds


def read_section(path: Path, start: str, end: str) -> str:
    """The section's current text between its markers, or "" where it is not there yet."""
    text = path.read_text() if path.exists() else ""
    return text[text.index(start):text.index(end)] if start in text and end in text else ""


def replace_section(path: Path, start: str, end: str, body: str) -> None:
    """Put `body` between the markers, in place, or append the section at the end."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{start}\n{body}\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def merge_table(old_section: str, header: list[str], new_rows: dict[tuple[str, str], str]) -> str:
    """The markdown table of a section: its rows already there (keyed by their first two
    cells), those just measured replacing theirs, under `header` (its title and rule lines)."""
    n_cols = header[0].count("|") - 1
    title = header[0].strip("| ").split("|")[0].strip()
    table: dict[tuple[str, str], str] = {}
    for line in old_section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == n_cols and cells[0] not in (title, "---"):
            table[cells[0], cells[1]] = line
    table.update(new_rows)
    return "\n".join(header + list(table.values()))


def group_runs(results: list[dict], keys: tuple[str, str]) -> dict[tuple, tuple[list, list]]:
    """Runs grouped by two of their fields: (completed runs, all runs) per group."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r[keys[0]], r[keys[1]]), []).append(r)
    return {k: ([r for r in rs if r.get("status") == "completed"], rs)
            for k, rs in groups.items()}


def seed_cells(ok: list[dict]) -> tuple[str, str, str, float]:
    """Table cells of completed runs: seeds, final returns, wall seconds; and the mean return."""
    returns = [r["eval_return_mean"] for r in ok]
    return (",".join(str(r["seed"]) for r in ok), ", ".join(f"{x:.1f}" for x in returns),
            ", ".join(str(round(r["wall_seconds"])) for r in ok), statistics.mean(returns))


def write_table_section(path: Path, start: str, end: str, text: str, header: list[str],
                        new_rows: dict[tuple[str, str], str]) -> str:
    """The section: `text` (its heading and explanation), then the merged table."""
    body = text + "\n\n" + merge_table(read_section(path, start, end), header, new_rows)
    replace_section(path, start, end, body)
    return body


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (hosts differ between sessions)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    """CPU model, cores (and how many this process may use), RAM, OS: for benchmark headers."""
    cpu = cpu_model()
    try:
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
        ram = f"{kib / 2**20:.1f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        ram = "RAM unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{cpu}, {os.cpu_count()} logical cores ({usable} usable by this process), {ram}, "
            f"{platform.system()} {platform.release()}")


def package_versions(packages: dict[str, str]) -> str:
    """"python 3.11.7, torch 2.13.0, ..." for {name: distribution}."""
    found = {"python": platform.python_version()}
    for name, dist in packages.items():
        try:
            found[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return ", ".join(f"{k} {v}" for k, v in found.items())
