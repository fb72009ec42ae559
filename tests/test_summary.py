"""rl_runner.summary on a sweep directory built by hand: every layout a sweep can leave behind."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from rl_runner.errors import UserError
from rl_runner.stats import bootstrap_ci, iqm, mean_std
from rl_runner.summary import collect_runs, summarize, write_summary

# every job shares env=cartpole: labels keep only what differs
PPO, PG = "algo=ppo", "algo=pg"


def results(seed: int, ret: float | None, status: str = "completed", **extra) -> dict:
    """A results.json as the trainer writes it (the fields the summary reads, and a few more)."""
    return {"algo": "ppo", "env": "cartpole", "env_id": "CartPole-v1", "seed": seed,
            "env_steps": 2048, "grad_steps": 640, "wall_seconds": 12.5 + seed, "sps": 163.84,
            "eval_return_mean": ret, "eval_return_std": None if ret is None else 3.25,
            "eval_episodes": 2, "best_eval_return_mean": None if ret is None else ret + 1.5,
            "status": status, "versions": {"python": "3.11"}, "total_steps": 2048, **extra}


def make_job(sweep: Path, name: str, overrides: list[str], res: dict | str | None) -> Path:
    """A job directory: .hydra/overrides.yaml and config.yaml, and results.json unless None."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    seed = next((int(o[5:]) for o in overrides if o.startswith("seed=")), 0)
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "algo": {}}))
    if res is not None:
        (job / "results.json").write_text(res if isinstance(res, str) else json.dumps(res))
    return job


@pytest.fixture
def sweep(tmp_path) -> tuple[Path, dict[str, dict | None]]:
    """A sweep with completed, failed, missing, malformed and repeat jobs; {job: results}."""
    root = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    (root / "optimization_results.yaml").write_text("best: 1\n")
    (root / "notes").mkdir()  # not a job: no .hydra/
    launcher = "hydra/launcher=joblib"
    jobs = {
        "0_ppo_cartpole_s0": results(0, 100.5),
        "1_ppo_cartpole_s1": results(1, 120.25),
        "2_ppo_cartpole_s2": results(2, None, "failed",
                                     error="RuntimeError: boom\n  in the second line"),
        "3_pg_cartpole_s0": None,
        "5_ppo_cartpole_s3": "{not json",
        "10_pg_cartpole_s2": results(2, 50.0),
    }
    for name, res in jobs.items():
        algo, seed = name.split("_")[1], name.rsplit("_s", 1)[1]
        make_job(root, name, [f"algo={algo}", "env=cartpole", f"seed={seed}", launcher], res)
    # a repeat job: its own results.json averages two full runs in s0/ and s1/
    repeat = make_job(root, "4_pg_cartpole_s1", ["algo=pg", "env=cartpole", "seed=1"],
                      {**results(1, 65.0), "runs": ["s0", "s1"]})
    for sub, seed, ret in (("s0", 1, 60.0), ("s1", 101, 70.0)):
        (repeat / sub).mkdir()
        jobs[f"4_pg_cartpole_s1/{sub}"] = results(seed, ret)
        (repeat / sub / "results.json").write_text(json.dumps(jobs[f"4_pg_cartpole_s1/{sub}"]))
    return root, jobs


def md_table(md: str, heading: str) -> list[list[str]]:
    """The body rows of the markdown table under `heading`, as lists of cells."""
    section = md.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [ln for ln in section.splitlines() if ln.startswith("|")][2:]  # past header, ---
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in rows]


def one_decimal(x: float | None) -> str:
    return "" if x is None else f"{x:.1f}"


ORDER = ["0_ppo_cartpole_s0", "1_ppo_cartpole_s1", "2_ppo_cartpole_s2", "3_pg_cartpole_s0",
         "4_pg_cartpole_s1/s0", "4_pg_cartpole_s1/s1", "5_ppo_cartpole_s3", "10_pg_cartpole_s2"]


def test_jobs_in_order_with_labels_and_seeds(sweep):
    root, _ = sweep
    runs = collect_runs(root)
    assert [r.job for r in runs] == ORDER  # 10 after 2: by job number, not as strings
    assert [r.config for r in runs] == [PPO, PPO, PPO, PG, PG, PG, PPO, PG]
    assert [r.seed for r in runs] == [0, 1, 2, 0, 1, 101, 3, 2]  # repeat runs: their own seeds
    assert runs[4].path == root / "4_pg_cartpole_s1" / "s0"


def test_csv_and_md_job_rows_match_results(sweep):
    root, jobs = sweep
    csv_path, md_path = write_summary(root)
    assert (csv_path, md_path) == (root / "summary.csv", root / "summary.md")
    rows = list(csv.DictReader(csv_path.open()))
    job_rows = [r for r in rows if r["kind"] == "job"]
    md_rows = md_table(md_path.read_text(), "## Per job")
    assert [r["job"] for r in job_rows] == [r[0] for r in md_rows] == ORDER
    for row, md in zip(job_rows, md_rows):
        res = jobs[row["job"]]
        if not isinstance(res, dict):
            continue
        for key in ("eval_return_mean", "eval_return_std", "best_eval_return_mean", "env_steps",
                    "wall_seconds", "sps"):
            assert row[key] == ("" if res[key] is None else str(res[key])), key  # unrounded
        assert row["status"] == md[3] == res["status"]
        assert md[2] == row["seed"] == str(res["seed"])
        assert md[4] == one_decimal(res["eval_return_mean"])
        assert md[5] == one_decimal(res["best_eval_return_mean"])
        assert md[6] == str(res["env_steps"])
        assert md[7] == one_decimal(res["wall_seconds"])


def test_failed_missing_and_malformed_jobs(sweep):
    root, _ = sweep
    csv_path, md_path = write_summary(root)
    rows = {r["job"]: r for r in csv.DictReader(csv_path.open()) if r["kind"] == "job"}
    md = {r[0]: r for r in md_table(md_path.read_text(), "## Per job")}
    failed = rows["2_ppo_cartpole_s2"]
    assert failed["status"] == md["2_ppo_cartpole_s2"][3] == "failed"
    assert failed["eval_return_mean"] == md["2_ppo_cartpole_s2"][4] == ""
    assert failed["error"] == "RuntimeError: boom\n  in the second line"  # csv: the whole message
    assert md["2_ppo_cartpole_s2"][8] == "RuntimeError: boom in the second line"  # md: one line
    assert rows["3_pg_cartpole_s0"]["status"] == md["3_pg_cartpole_s0"][3] == "missing"
    assert rows["3_pg_cartpole_s0"]["seed"] == "0"  # from .hydra/config.yaml
    assert rows["5_ppo_cartpole_s3"]["status"] == "missing"
    assert "results.json unreadable" in md["5_ppo_cartpole_s3"][8]
    header = md_path.read_text().splitlines()[0]
    assert str(root) in header and "8 jobs, 5 completed, 3 failed" in header


def test_config_rows_aggregate_completed_runs_with_stats(sweep):
    root, _ = sweep
    csv_path, md_path = write_summary(root)
    rows = {r["config"]: r for r in csv.DictReader(csv_path.open()) if r["kind"] == "config"}
    md = md_table(md_path.read_text(), "## Per configuration")
    assert [r[0] for r in md] == list(rows) == [PPO, PG]  # order of first appearance
    for (config, returns, walls, done, total), md_row in zip(
            [(PPO, [100.5, 120.25], [12.5, 13.5], 2, 4),
             (PG, [60.0, 70.0, 50.0], [13.5, 113.5, 14.5], 3, 4)], md):
        row = rows[config]
        mean, std = mean_std(returns)
        low, high = bootstrap_ci(returns)
        assert float(row["return_mean"]) == pytest.approx(mean)
        assert float(row["return_std"]) == pytest.approx(std)
        assert float(row["return_iqm"]) == pytest.approx(iqm(returns))
        assert (float(row["return_ci_low"]), float(row["return_ci_high"])) == (low, high)
        assert float(row["wall_seconds_total"]) == pytest.approx(sum(walls))
        assert float(row["env_steps_mean"]) == 2048
        assert (row["runs"], row["completed"], row["failed"]) == (str(total), str(done),
                                                                  str(total - done))
        assert md_row[1] == f"{mean:.1f} ± {std:.1f}"
        assert md_row[2] == f"{iqm(returns):.1f}"
        assert md_row[3] == f"[{low:.1f}, {high:.1f}]"
        assert md_row[6] == f"{done}/{total}"


def test_rewriting_replaces_only_its_own_files(sweep):
    root, _ = sweep
    before = sorted(p.name for p in root.iterdir())
    first = [p.read_text() for p in write_summary(root)]
    second = [p.read_text() for p in write_summary(root)]
    assert first == second
    assert sorted(p.name for p in root.iterdir()) == sorted(before + ["summary.csv", "summary.md"])
    assert (root / "optimization_results.yaml").read_text() == "best: 1\n"


def test_one_run_and_one_repeat_job(tmp_path):
    run = make_job(tmp_path, "run", ["algo=ppo", "seed=4"], results(4, 9.0))
    [one] = collect_runs(run)
    assert (one.job, one.config, one.seed, one.results["eval_return_mean"]) == ("run", "algo=ppo",
                                                                                 4, 9.0)
    bare = tmp_path / "bare"  # no .hydra/: the label falls back to "defaults"
    bare.mkdir()
    (bare / "results.json").write_text(json.dumps(results(0, 1.0)))
    assert [(r.config, r.seed) for r in collect_runs(bare)] == [("defaults", 0)]
    repeat = make_job(tmp_path, "rep", ["seed=0"], {**results(0, 2.0), "runs": ["s0", "s1"]})
    (repeat / "s0").mkdir()
    (repeat / "s0" / "results.json").write_text(json.dumps(results(0, 2.0)))
    job_rows, _ = summarize(collect_runs(repeat))
    assert [(r["job"], r["status"]) for r in job_rows] == [("rep/s0", "completed"),
                                                           ("rep/s1", "missing")]


def test_labels_drop_seed_and_hydra_keys_and_survive_bad_yaml(tmp_path):
    make_job(tmp_path, "0_a", ["+algo=sac", "~trainer.foo", "seed=7", "hydra.verbose=true",
                               "++hydra/sweeper=basic"], None)
    bad = make_job(tmp_path, "1_b", [], results(1, 2.0))
    (bad / ".hydra" / "overrides.yaml").write_text("[unclosed\n")
    (bad / ".hydra" / "config.yaml").unlink()
    (tmp_path / "0_a" / ".hydra" / "config.yaml").unlink()
    a, b = collect_runs(tmp_path)
    assert (a.config, a.seed, a.results) == ("+algo=sac ~trainer.foo", 7, None)
    assert b.config == "defaults" and b.seed == 1 and b.results["eval_return_mean"] == 2.0
    assert "overrides.yaml unreadable" in b.error
    job_rows, config_rows = summarize([a, b])
    assert job_rows[1]["status"] == "completed" and "overrides.yaml" in job_rows[1]["error"]
    assert config_rows[0]["return_mean"] is None and config_rows[0]["return_ci_low"] is None
    assert config_rows[1]["return_std"] is None  # one run: no spread, no interval


def test_no_runs_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="holds no run"):
        write_summary(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        collect_runs(tmp_path / "nope")
