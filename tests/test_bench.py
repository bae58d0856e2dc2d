"""The benchmark harness: grid files, cache keys, results log, and a killed run that resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelprove.bench import BenchConfigError, load_bench_config, parse_bench_config, preset_names, recipe_key
from modelprove.bench.config import FALSE_CLAIM
from modelprove.bench.results import ResultLog
from modelprove.bench.runner import KILL_AFTER_VARIABLE, plan_grid, run_bench

DATA = {"dataset": "x", "defender": "d0", "attacker": "a0", "test": "t0"}

GRID = {
    "name": "unit",
    "seeds": [0, 1],
    "settings": ["white-box", "black-box"],
    "data": {"dataset": "mnist-digits", "defender_limit": 100},
    "training": {"arch": "cnn_small", "epochs": 2},
    "methods": [{"name": "move", "set": {"benign_models": 1}}],
    "attacks": [{"label": "Direct-copy", "attack": "copy"}, {"label": "Fine-tuning", "attack": "finetune:epochs=1"}],
    "independents": [{"arch": "lenet5", "seeds": [200]}],
}


def keys(grid: dict, data: dict = DATA) -> dict[str, set[str]]:
    """Every key the grid's plan holds, by kind: protections, suspects, independents, cells."""
    protections, suspects, plan = plan_grid(parse_bench_config(grid), data)
    return {
        "protections": {p["key"] for p in protections.values()},
        "suspects": {recipe_key(chain[-1]) for chain in suspects.values()},
        "independents": {c["suspect_key"] for c in plan if c["kind"] == "independent"},
        "cells": {c["key"] for c in plan},
    }


def variant(**changes) -> dict:
    grid = json.loads(json.dumps(GRID))
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = grid
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    return grid


def test_recipe_key_ignores_order_and_sees_every_value():
    recipe = {"a": 1, "b": {"c": [1, 2], "d": "x"}}
    assert recipe_key(recipe) == recipe_key({"b": {"d": "x", "c": [1, 2]}, "a": 1})
    for changed in ({"a": 2, "b": {"c": [1, 2], "d": "x"}}, {"a": 1, "b": {"c": [2, 1], "d": "x"}},
                    {"a": 1, "b": {"c": [1, 2], "d": "y"}}, {"a": 1, "b": {"c": [1, 2], "d": "x"}, "e": None}):
        assert recipe_key(changed) != recipe_key(recipe)


def test_plan_counts_every_cell():
    plan = plan_grid(parse_bench_config(GRID), DATA)[2]
    # 2 seeds x 1 method x (2 attacks + 1 independent) x 2 settings
    assert len(plan) == 12 and len({c["key"] for c in plan}) == 12
    # a label-only method is verified only in the settings it declares: label-only
    labels = plan_grid(parse_bench_config({**GRID, "settings": ["white-box", "black-box", "label-only"],
                                           "methods": [{"name": "move"}, {"name": "adi"}]}), DATA)[2]
    assert {c["setting"] for c in labels if c["method"] == "adi"} == {"label-only"}
    assert {c["setting"] for c in labels if c["method"] == "move"} == {"white-box", "black-box"}


def test_attacks_never_take_the_victims_seed():
    from modelprove.attacks.base import student_seed
    from modelprove.bench.runner import attack_seed

    protections, suspects, _ = plan_grid(parse_bench_config(GRID), DATA)
    for (seed, _, _), chain in suspects.items():
        assert all(stage["attack_seed"] == attack_seed(seed) != seed for stage in chain)
    # and a student built with the victim's own seed still starts elsewhere: its init seed is hashed
    assert all(student_seed(s) not in (s, attack_seed(s)) for s in range(5))


def test_keys_unchanged_by_presentation_fields():
    base = keys(GRID)
    assert keys(variant(attacks__0__label="Copy", name="renamed", description="words")) == {
        **base, "cells": keys(variant(attacks__0__label="Copy"))["cells"]}
    assert keys(variant(methods__0__label="MOVE")) == base
    assert keys(variant(data__data_dir="/elsewhere")) == base  # where the files are, not what they hold


@pytest.mark.parametrize("change, changed", [
    ({"training__epochs": 3}, {"protections", "suspects", "independents", "cells"}),
    ({"training__arch": "lenet5"}, {"protections", "suspects", "independents", "cells"}),
    ({"methods__0__set": {"benign_models": 2}}, {"protections", "suspects", "cells"}),
    ({"attacks__1__attack": "finetune:epochs=2"}, {"suspects", "cells"}),
    ({"independents__0__seeds": [201]}, {"independents", "cells"}),
    ({"methods__0__set": {"benign_models": 1, "margin": 0.1}}, {"cells"}),  # a verification option
    ({"independents__0__optimizer": "adam"}, {"independents", "cells"}),  # an honest model's recipe
    ({"independents__0__data_fraction": 0.5}, {"independents", "cells"}),
    ({"panel": {"size": 5}}, {"protections", "suspects", "cells"}),  # the calibration is part of a protection
])
def test_keys_change_exactly_where_the_input_determines_them(change, changed):
    base, new = keys(GRID), keys(variant(**change))
    for kind in base:
        assert (base[kind] != new[kind]) == (kind in changed), kind


def test_a_methods_verdict_version_rekeys_only_its_cells(monkeypatch):
    """A change to how a method decides (OwnershipMethod.verdict_version) verifies its cells again and
    rebuilds nothing; at version 0 the key is what it was before versions existed."""
    from modelprove.methods import METHODS

    base = keys(GRID)
    assert METHODS["move"].verdict_version == 0
    monkeypatch.setattr(type(METHODS["move"]), "verdict_version", 7)
    new = keys(GRID)
    assert new["cells"].isdisjoint(base["cells"])
    assert {kind: new[kind] for kind in new if kind != "cells"} == {kind: base[kind] for kind in base if kind != "cells"}


def test_keys_change_with_the_data():
    base = keys(GRID)
    other = keys(GRID, {**DATA, "attacker": "a1"})
    assert other["protections"] == base["protections"]  # the victim never sees the attacker's data
    assert other["suspects"] != base["suspects"] and other["independents"] != base["independents"]
    assert keys(GRID, {**DATA, "defender": "d1"})["protections"] != base["protections"]


@pytest.mark.parametrize("change, field", [
    ({"bogus": 1}, "bogus"),
    ({"methods": [{"name": "nope"}]}, "methods[0].name"),
    ({"methods": []}, "methods"),
    ({"attacks": [{"attack": "nope"}]}, "attacks[0].attack"),
    ({"independents": [{"arch": "cnn_small", "seeds": [0]}]}, "independents[0].seeds"),
    ({"independents": [{"arch": "lenet5", "seeds": [1], "data": "defender"}]}, "independents[0].data"),
    ({"settings": ["grey-box"]}, "settings"),
    ({"training": {"arch": "nope"}}, "training.arch"),
    ({"data": {"size": 3}}, "data.size"),
    ({"independents": [{"arch": "lenet5", "seeds": [1], "optimizer": "rmsprop"}]}, "independents[0].optimizer"),
    ({"independents": [{"arch": "lenet5", "seeds": [1], "colour": "red"}]}, "independents[0].colour"),
    ({"panel": {"size": 2}}, "panel"),
    ({"independents": [{"arch": "lenet5", "seeds": [1], "student": "nope"}]}, "independents[0].student"),
    ({"independents": [{"arch": "lenet5", "seeds": [1], "student": "distill>copy"}]}, "independents[0].student"),
])
def test_grid_errors_name_the_field(change, field):
    with pytest.raises(BenchConfigError, match=f"field '{field.replace('[', '.').replace(']', '.')}"):
        parse_bench_config({**GRID, **change}, source="grid.toml")


def test_unknown_method_parameter_is_refused():
    with pytest.raises(Exception, match="no parameter 'nope'"):
        plan_grid(parse_bench_config(variant(methods__0__set={"nope": 1})), DATA)


def test_false_claims_verify_each_victim_against_a_strangers_fingerprint():
    """false_claims = [seed]: each fingerprint method fingerprints that independent model on the attacker's
    data, once, and every victim (the seed's benign model) is verified against it; fingerprint methods
    share their suspects (the benign model is every one's victim)."""
    grid = {**GRID, "settings": ["label-only"], "methods": [{"name": "cae"}, {"name": "ipguard"}, {"name": "adi"}],
            "independents": [{"arch": "lenet5", "seeds": [200, 201]}], "false_claims": [201]}
    protections, suspects, plan = plan_grid(parse_bench_config(grid), DATA)
    claims = [c for c in plan if c["kind"] == "claim"]
    assert len(claims) == 2 * 2  # 2 fingerprint methods x 2 victim seeds (adi watermarks its own victim)
    assert {c["method"] for c in claims} == {"cae", "ipguard"} and {c["seed"] for c in claims} == {0, 1}
    claim = claims[0]["protection"]
    independent = next(c for c in plan if c["kind"] == "independent" and c["independent"]["seed"] == 201)
    assert claim["recipe"]["source"] == independent["independent"]["recipe"] and claim["recipe"]["part"] == "attacker"
    assert "defender" not in claim["recipe"]["data"]  # the stranger never had the victim's data
    assert len({c["protection"]["key"] for c in claims}) == 2  # one fingerprint per method, for every victim
    benign = {c["seed"]: c["suspect_key"] for c in claims}
    assert benign[0] != benign[1] and len({c["key"] for c in plan}) == len(plan)
    # CAE's and IPGuard's suspects of a seed are one set of models; adi's are its own victim's
    victims = {label: {chain[0]["victim"] for (seed, method, _), chain in suspects.items() if method == label and seed == 0}
               for label in ("cae", "ipguard", "adi")}
    assert victims["cae"] == victims["ipguard"] != victims["adi"]
    for bad in ([999], [200, 200], "200"):
        with pytest.raises(BenchConfigError, match="field 'false_claims'"):
            parse_bench_config({**grid, "false_claims": bad})
    with pytest.raises(BenchConfigError, match="fingerprints an already trained model"):
        parse_bench_config({**grid, "methods": [{"name": "adi"}]})


def test_report_sections_of_a_fingerprint_grid(tmp_path):
    """The ROC AUC (with its interval), the conferrability-per-eps table and the false claims, from records
    shaped as run_cell writes them: numbers a hand count gives."""
    from modelprove.bench import report
    from modelprove.bench.runner import BenchRun

    config = parse_bench_config({**GRID, "seeds": [0], "settings": ["label-only"], "methods": [{"name": "cae"}],
                                 "attacks": [{"label": "FTAL", "attack": "ftal"}, {"label": "RTAL", "attack": "rtal"}],
                                 "independents": [{"arch": "lenet5", "seeds": [200, 201]}], "false_claims": [200]})
    summary = [{"eps": 0.05, "attack": "cem", "images": 4, "fooled": 4, "success": 1.0, "conferrability_ensemble": 0.9},
               {"eps": 0.05, "attack": "pgd", "images": 4, "fooled": 4, "success": 1.0, "conferrability_ensemble": 0.2}]

    def cell(row: str, statistic: float, cem: str, pgd: str, **extra) -> dict:
        return {"seed": 0, "method": "cae", "setting": "label-only", "row": row, "statistic": statistic,
                "outcome": "not stolen", "paper": {"outcome": "not stolen", "p_value": 0.5}, "p_value": 0.5,
                "panel_mean": 0.1, "suspect_test_accuracy": 0.8, "fidelity": 0.9, "victim_test_accuracy": 0.8,
                "benign_test_accuracy": 0.8, "study": {"comparison": summary, "matches": {"0.05/cem": cem,
                                                                                          "0.05/pgd": pgd},
                                                       "fingerprint": {"fingerprint_size": 7, "n": 10, "candidates": 50,
                                                                       "fooled_source": 20, "qualified": 7, "rho": 0.5}},
                **extra}

    records = [cell("FTAL", 0.9, "1111", "1111"), cell("RTAL", 0.3, "1100", "1111"),
               cell("Independent", 0.2, "0011", "1111", independent="a", independent_arch="lenet5"),
               cell("Independent", 0.5, "0000", "1110", independent="b", independent_arch="lenet5"),
               {**cell(FALSE_CLAIM, 0.4, "", "", claimant="a"), "outcome": "stolen"}]
    run = BenchRun(config, tmp_path, records, 5, 0, 0, 1.0)
    text = report.markdown(run)
    # stolen 0.9, 0.3 vs independent 0.2, 0.5: 3 of 4 pairs ordered -> AUC 0.75
    assert "| cae | label-only | 2 | 2 | **0.750** [" in text
    # per example: Transfer(stolen) CEM = [1, 1, .5, .5], Transfer(independent) = [0, 0, .5, .5]
    # -> conferrability mean of [1, 1, .25, .25] = 0.625; PGD: stolen 1, independent [1, 1, 1, .5] -> 0.125
    assert "| cae | 0.05 | cem | 1.000 | 4 | **0.625** | 0.750 | 0.250 | 0.900 |" in text
    assert "| cae | 0.05 | pgd | 1.000 | 4 | 0.125 | 1.000 | 0.875 | 0.200 |" in text
    assert "| cae | label-only | a | 1 | **1** | 0 | 0 |" in text  # the false claim, counted apart
    assert "| cae | 0 | 7 / 10 | 50 | 20 | 7 | n/a | n/a | 0.500 |" in text
    assert "| cae | 0.8000 | 0.8000 |" in text  # harmlessness from the grid's own cells only


def test_calibration_of_the_null_panel_counts_what_a_hand_count_gives():
    """Shares of decided pairs below each level, the exact interval of the accusation rate and the recipe with the
    lowest median p; inconclusive pairs are not counted."""
    from types import SimpleNamespace

    from modelprove.bench.report import calibration_section

    def pair(p: float, recipe: str, outcome: str = "not stolen") -> dict:
        return {"method": "move", "setting": "black-box", "p_value": p, "outcome": outcome,
                "independent_arch": "cnn_small", "independent_recipe": recipe}

    pairs = [pair((i + 0.5) / 100, "sgd" if i % 2 else "adam") for i in range(100)]
    pairs[0] = pair(0.005, "adam", "stolen")
    pairs += [pair(0.001, "sgd", "inconclusive")]
    run = SimpleNamespace(config=SimpleNamespace(settings=["white-box", "black-box"]))
    text = "\n".join(calibration_section(run, pairs, ["move"], 0.01))
    # 1 of 100 below 0.01, 5 below 0.05, 10 below 0.1; the exact 95% interval of 1/100 is [0.0003, 0.0545]; adam's
    # median is that of p = 0.485 and 0.505
    assert "| move | black-box | 100 | 0.010 | 0.050 | 0.100 | 1/100 [0.000, 0.054] | cnn_small adam (50): 0.495 |" in text
    assert "white-box" not in text.split("|---|")[-1]  # no decided pairs: no row
    assert calibration_section(run, [pair(0.2, "sgd", "inconclusive")], ["move"], 0.01) == []


def test_retained_share_is_the_share_of_the_victims_distance_a_hand_count_gives():
    """(T - panel mean) / (victim - panel mean) per decided pair: the range over accused honest pairs, the most
    any decided honest pair kept, the least a detected stolen suspect kept; inconclusive pairs and records
    without a victim above its panel are left out."""
    from types import SimpleNamespace

    from modelprove.bench.report import retained_section, retained_share

    def cell(row: str, statistic: float, outcome: str, victim: float = 0.9) -> dict:
        return {"method": "badnets", "setting": "black-box", "row": row, "statistic": statistic, "outcome": outcome,
                "panel_mean": 0.1, "self_test": {"statistic": victim}}

    records = [cell("Independent", 0.108, "stolen"), cell("Independent", 0.104, "stolen"),
               cell("Independent", 0.116, "not stolen"), cell("Independent", 0.9, "inconclusive"),
               cell("Copy", 0.9, "stolen"), cell("Distillation", 0.1032, "stolen"), cell("Distillation", 0.1, "not stolen"),
               cell("Independent", 0.5, "stolen", victim=0.05)]
    assert retained_share(records[0]) == pytest.approx(0.01) and retained_share(records[-1]) is None
    run = SimpleNamespace(records=records, config=SimpleNamespace(
        settings=["white-box", "black-box"], attacks=[SimpleNamespace(label="Copy"), SimpleNamespace(label="Distillation")]))
    text = "\n".join(retained_section(run, ["badnets"]))
    assert "| badnets | black-box | 2: 0.005 to 0.010 | 0.020 | 0.004 (Distillation) |" in text
    assert "white-box" not in text.split("|---|")[-1]
    assert retained_section(SimpleNamespace(records=[], config=run.config), ["badnets"]) == []


def test_presets_parse():
    assert {"smoke", "move-fmnist", "multistage", "cae-fmnist"} <= set(preset_names())
    for name in preset_names():
        config = load_bench_config(name)
        assert config.methods and config.attacks
    fmnist = load_bench_config("move-fmnist")
    assert len(fmnist.independent_models()) >= 10 and fmnist.seeds == (0, 1, 2)


def test_result_log_drops_a_truncated_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    log = ResultLog(path)
    log.add({"cell": "a", "p": 1})
    log.add({"cell": "b", "p": 2})
    with open(path, "a") as handle:
        handle.write('{"cell": "c", "p"')  # killed mid-write
    reopened = ResultLog(path)
    assert reopened.dropped == 1 and set(reopened.records) == {"a", "b"}
    reopened.add({"cell": "c", "p": 3})
    assert [json.loads(line)["cell"] for line in path.read_text().splitlines()] == ["a", "b", "c"]


def group_ends(group: int, seconds: float) -> bool:
    """Whether every process of the process group ``group`` is gone within ``seconds``."""
    deadline = time.time() + seconds
    while True:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        if time.time() > deadline:
            return False
        time.sleep(0.2)


@pytest.mark.slow
def test_smoke_preset_killed_then_resumed_then_cached(tmp_path):
    """The smoke preset end to end in worker processes: its coordinator killed after the first results
    (its workers then end by themselves), resumed, re-run from cache, and verified again in one process
    from the same cache with the same numbers."""
    out, cache = tmp_path / "run", tmp_path / "cache"
    # The run kills itself (SIGKILL, its worker processes too) right after its second result line: a kill
    # mid-grid for sure, however fast the machine (waiting for the lines to kill it from outside raced it).
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1",
           KILL_AFTER_VARIABLE: "2"}
    process = subprocess.Popen(
        [sys.executable, "-m", "modelprove", "bench", "smoke", "--out", str(out), "--cache", str(cache),
         "--threads", "1", "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        _, stderr = process.communicate(timeout=1200)  # a guard against a hang, not a timing
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]  # killed, not finished or failed
    results = out / "results.jsonl"
    assert not (out / "report.md").exists() and not (out / "runs.jsonl").exists()  # it never finished
    try:  # no worker may go on writing to the cache of a run that is gone
        assert group_ends(process.pid, 30), "worker processes outlived their killed coordinator"
    finally:
        if not group_ends(process.pid, 0):
            os.killpg(process.pid, signal.SIGKILL)
    lines = results.read_text().splitlines()
    if lines and not lines[-1].endswith("}"):
        lines.pop()  # killed mid-write: the resume drops that line
    before = {json.loads(line)["cell"]: json.loads(line) for line in lines}
    total = len(plan_grid(load_bench_config("smoke"), {"dataset": "x", "defender": "d", "attacker": "a",
                                                          "test": "t"})[2])
    assert 2 <= len(before) < total
    with open(results, "a") as handle:
        handle.write('{"cell": "half a li')  # as if the kill had landed mid-write
    cached_models = {p.parent.name for p in cache.rglob("entry.json")}

    config = load_bench_config("smoke")
    resumed = run_bench(config, out, cache_dir=cache, threads=1, workers=2, progress=False)
    total = len(resumed.records)
    assert resumed.missing == 0 and len(before) < total and resumed.cells_run == total - len(before)
    after = {json.loads(line)["cell"]: json.loads(line) for line in results.read_text().splitlines()}
    assert len(after) == total and all(after[cell] == record for cell, record in before.items())
    rebuilt = {p.parent.name for p in cache.rglob("entry.json")}
    assert cached_models <= rebuilt and resumed.cache_misses == len(rebuilt - cached_models)
    assert not list(cache.rglob("*.partial/entry.json"))
    report = (out / "report.md").read_text()
    assert "## Verification, black-box" in report and "## False accusations" in report
    assert "| move | train victim |" in report and "| move | calibration |" in report  # the cost by component
    assert (out / "report-pvalues.png").stat().st_size > 0
    assert [r["cells_run"] for r in resumed.history] == [total - len(before)]  # the killed run never finished
    assert "| 2 x 1 |" in report

    again = run_bench(config, out, cache_dir=cache, threads=1, progress=False)
    assert again.cells_run == 0 and again.cache_misses == 0 and again.records == resumed.records
    assert [r["cells_run"] for r in again.history] == [total - len(before), 0]

    alone = run_bench(config, tmp_path / "alone", cache_dir=cache, threads=1, workers=1, progress=False)
    assert alone.cells_run == total and alone.cache_misses == 0

    def numbers(records):
        return [{k: v for k, v in r.items() if k != "verify_seconds"} for r in records]

    assert numbers(alone.records) == numbers(resumed.records)


def planned_jobs(grid_dict: dict, cached: set[str] = frozenset()):
    """The grid's jobs, with the recipes of ``cached`` kinds ("models", "protections") already in the cache."""
    from modelprove.bench.runner import _Grid  # noqa: PLC2701 - the job plan is the runner's own

    grid = _Grid.__new__(_Grid)
    grid.config = parse_bench_config(grid_dict)
    grid.data = DATA
    grid.protections, grid.suspect_recipes, grid.plan = plan_grid(grid.config, grid.data)

    class Cache:
        def entry_seconds(self, kind, recipe):
            return 1.0 if kind in cached else None

    grid.cache = Cache()
    grid.panel_members = lambda: [({"kind": "panel", "member": i}, None) for i in range(2)]  # no data to draw them
    return grid, grid.jobs(grid.plan)


def test_jobs_name_what_they_need_and_build_nothing_twice():
    """Shared models, protections and each suspect stage one job each; each suspect's cells one job, after
    the jobs that make what it verifies; every job after its deps; seed by seed."""
    from modelprove.bench.executors import check_order

    chained = variant(attacks=[*GRID["attacks"], {"label": "Copy > FT", "attack": "copy>finetune:epochs=1"}])
    grid, jobs = planned_jobs(chained)
    check_order(jobs)  # every dep is an earlier job: the list is a valid order
    by_key = {job.key: job for job in jobs}
    kinds = [job.kind for job in jobs]
    assert kinds[:5] == ["benign", "benign", "panel", "panel", "independent"]
    # per seed: the protection, then each suspect and its cells (copy, finetune, copy>finetune, whose first
    # stage is the copy's job), then the independent's cells
    assert kinds[5:] == 2 * ["protection", "suspect", "cells", "suspect", "cells", "suspect", "cells", "cells"]
    cells = [key for job in jobs if job.kind == "cells" for key in job.payload]
    assert sorted(cells) == sorted(c["key"] for c in grid.plan)  # every cell once
    cell_of = {c["key"]: c for c in grid.plan}
    for job in jobs:
        needs = {by_key[dep].kind: by_key[dep] for dep in job.deps}
        if job.kind == "cells":
            group = [cell_of[k] for k in job.payload]
            assert len({(c["protection"]["key"], c["suspect_key"]) for c in group}) == 1
            maker = needs["suspect" if group[0]["kind"] == "attack" else "independent"]
            assert maker.key.endswith(group[0]["suspect_key"])
            assert needs["protection"].key == f"protection:{group[0]['protection']['key']}"
            assert needs["benign"].payload == group[0]["seed"]
        elif job.kind == "suspect":
            seed, label, attack, stages = job.payload
            assert needs["protection"].payload == (seed, label)
            assert len(job.deps) == (1 if stages == 1 else 2)  # stage n needs stage n-1
            if stages == 2:
                assert [by_key[d].payload[3] for d in job.deps if by_key[d].kind == "suspect"] == [1]
        elif job.kind == "protection":  # after every model of the null panel it is calibrated on
            assert sorted(needs) == ["panel"] and len(job.deps) == 2
        else:
            assert job.deps == ()
    assert [cell_of[job.payload[0]]["seed"] for job in jobs if job.kind == "cells"] == 4 * [0] + 4 * [1]


def test_jobs_skip_what_the_cache_holds_and_carry_the_grids_resources():
    _, jobs = planned_jobs(variant(resources={"train": {"GPU": 1}}), cached={"protections"})
    assert {job.kind for job in jobs} == {"benign", "panel", "independent", "suspect", "cells"}
    assert all(not dep.startswith("protection:") for job in jobs for dep in job.deps)
    assert all(job.resources == ({} if job.kind == "cells" else {"GPU": 1.0}) for job in jobs)
    _, everything_cached = planned_jobs(GRID, cached={"protections", "models"})
    assert {job.kind for job in everything_cached} == {"cells"} and all(not j.deps for j in everything_cached)


@pytest.mark.parametrize("resources, field", [
    ({"gpu": {"GPU": 1}}, "resources.gpu"),
    ({"train": {"GPU": 0}}, "resources.train"),
    ({"train": {"GPU": "one"}}, "resources.train"),
    ({"train": 1}, "resources.train"),
])
def test_grid_resources_are_checked(resources, field):
    with pytest.raises(BenchConfigError, match=f"field '{field}'"):
        parse_bench_config({**GRID, "resources": resources}, source="grid.toml")


def test_cache_keeps_the_entry_a_concurrent_process_finished_first(tmp_path):
    from modelprove.bench import BenchCache

    ours, theirs = BenchCache(tmp_path), BenchCache(tmp_path)
    recipe = {"kind": "model", "seed": 1}

    def fill_theirs(staging):
        (staging / "weights").write_text("theirs")
        return {"by": "theirs"}

    def fill_ours(staging):
        theirs._build("models", recipe, fill_theirs)  # the other process renames its entry in first
        (staging / "weights").write_text("ours")
        return {"by": "ours"}

    directory, entry = ours._build("models", recipe, fill_ours)
    assert entry["info"] == {"by": "theirs"} and (directory / "weights").read_text() == "theirs"
    assert not list(tmp_path.rglob("*.partial"))
    again, _ = BenchCache(tmp_path)._build("models", recipe, fill_ours)  # complete: never rebuilt
    assert again == directory and (again / "weights").read_text() == "theirs"


@pytest.mark.slow
def test_sequential_and_fixed_designs_side_by_side(tmp_path):
    """A small grid (the smoke preset's data) verified black-box with MOVE's fixed design and the sequential
    one: the report puts their queries and outcomes side by side, and no sequential verdict spends more."""
    move_set = {"benign_models": 1, "m_black_box": 20, "test_transformed": 20, "meta_epochs": 5}
    grid = parse_bench_config({
        "name": "sequential-unit", "seeds": [0], "settings": ["black-box"],
        "data": {"dataset": "mnist-digits", "defender_limit": 1000, "attacker_limit": 1000, "test_limit": 500},
        "training": {"arch": "cnn_small", "epochs": 3},
        "panel": {"size": 4, "architectures": "cnn_small,lenet5", "epochs": 2},
        "methods": [{"name": "move", "label": "fixed", "set": move_set},
                    {"name": "move", "label": "sequential", "set": {**move_set, "sequential": True}}],
        "attacks": [{"label": "Direct-copy", "attack": "copy"}],
        "independents": [{"arch": "lenet5", "seeds": [200]}],
    })
    run = run_bench(grid, tmp_path / "run", cache_dir=tmp_path / "cache", threads=1, progress=False)
    by = {(r["method"], r["suspect"]): r for r in run.records}
    assert len(by) == 4
    for suspect in sorted({name for _, name in by}):
        fixed, sequential = by[("fixed", suspect)], by[("sequential", suspect)]
        competence = fixed["competence"]["queries"]  # every verification's competence check, the same for both
        assert fixed["queries"] == competence + 20 * 6 and "decided_by" not in fixed["paper"]
        for rule in (sequential, sequential["paper"]):  # each rule's own queries, never more than the fixed design's
            assert rule["queries"] <= fixed["queries"] and (rule["queries"] - competence) % 6 == 0
        assert sequential["paper"]["decided_by"] in ("sequential", "fixed-m test")
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Queries to a verdict, black-box" in report
    assert ("| suspect | fixed: queries, null panel | fixed: null panel | fixed: queries, paper's test | fixed: paper's "
            "test | sequential: queries, null panel |") in report
    assert f"| fixed | paper's test | 2 | 120 [120, 120] | 120 | {competence} [{competence}, {competence}] |" in report
    assert "Median queries to a verdict, sequential against fixed: null panel " in report


def test_bench_seeds_runs_a_subset_of_the_grid_and_refuses_others(tmp_path):
    from typer.testing import CliRunner

    from modelprove.cli.main import _grid_seeds, app

    config = load_bench_config("move-fmnist")
    assert _grid_seeds(config, "2,0").seeds == (2, 0) and _grid_seeds(config, "1").methods == config.methods
    result = CliRunner().invoke(app, ["bench", "move-fmnist", "--seeds", "7", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "has seeds [0, 1, 2]" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # refused before anything was made


def test_an_honest_student_is_keyed_after_its_teacher_and_named_by_its_attack():
    grid = variant(independents=[{"arch": "lenet5", "seeds": [200]},
                                 {"arch": "lenet5", "seeds": [200], "student": "distill:epochs=2"}])
    _, _, plan = plan_grid(parse_bench_config(grid), DATA)
    teacher, student = {}, {}
    for cell in plan:
        if cell["kind"] == "independent":
            (student if cell["independent"]["student"] else teacher)[cell["suspect_key"]] = cell["independent"]
    (teacher_key, plain), = teacher.items()
    (student_key, made), = student.items()
    assert student_key != teacher_key  # the student is its own model, made after its teacher
    assert made["teacher"] == plain["recipe"] and made["recipe"]["student"] == "distill:epochs=2"
    assert made["name"] != plain["name"] and "student-distill" in made["name"]


def test_stale_staging_of_killed_builds_is_removed_and_live_staging_kept(tmp_path):
    """A build killed by SIGKILL leaves its staging directory; one untouched for three days is removed, one
    being written is kept, and complete entries are never touched."""
    from modelprove.bench.cache import BenchCache

    cache = BenchCache(tmp_path)
    _, entry = cache.protection({"kind": "protection", "x": 1}, lambda out: out.mkdir() or {"ok": True})
    (tmp_path / "protections" / "ab").mkdir(parents=True)
    dead = tmp_path / "protections" / "ab" / ".ab12.killed.partial"
    live = tmp_path / "protections" / "ab" / ".ab34.running.partial"
    for staging in (dead, live):
        (staging / "protection").mkdir(parents=True)
        (staging / "protection" / "victim.safetensors").write_bytes(b"x")
    long_ago = time.time() - 73 * 3600
    for path in (dead / "protection" / "victim.safetensors", dead / "protection", dead):
        os.utime(path, (long_ago, long_ago))
    old_inside = live / "protection"  # a live build may have old directories but writes new files
    os.utime(old_inside, (long_ago, long_ago))
    removed = cache.remove_stale_staging()
    assert removed == [dead] and not dead.exists() and live.exists()
    assert cache.entry_info("protections", {"kind": "protection", "x": 1}) == {"ok": True}
