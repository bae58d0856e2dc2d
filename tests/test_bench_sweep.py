"""Attacks as points of curves in a bench grid (``curve``, ``x``, the grid's ``sweep``): parsing and the report."""

from __future__ import annotations

import pytest

from modelprove.bench import BenchConfigError, BenchRun, load_bench_config, parse_bench_config
from modelprove.bench.report import markdown, sweep_png

GRID = {
    "name": "sweep-unit", "seeds": [0, 1], "settings": ["white-box", "black-box"],
    "sweep": "sample rate",
    "data": {"dataset": "mnist-digits", "defender_limit": 100},
    "methods": [{"name": "move"}],
    "attacks": [{"label": "Copy", "attack": "copy", "curve": "Copy", "x": 0},
                {"label": "Copy > 10%", "attack": "copy>finetune:fraction=0.1", "curve": "Copy", "x": 0.1},
                {"label": "Distillation", "attack": "distill"}],
}


def test_curves_parse_and_need_both_fields_and_a_sweep():
    config = parse_bench_config(GRID)
    assert config.sweep == "sample rate"
    assert [(a.curve, a.x) for a in config.attacks] == [("Copy", 0.0), ("Copy", 0.1), (None, None)]
    with pytest.raises(BenchConfigError, match="one of curve and x"):
        parse_bench_config({**GRID, "attacks": [{"label": "A", "attack": "copy", "x": 0.1}]})
    with pytest.raises(BenchConfigError, match="field 'attacks.0..x'"):
        parse_bench_config({**GRID, "attacks": [{"label": "A", "attack": "copy", "curve": "C", "x": "much"}]})
    with pytest.raises(BenchConfigError, match="field 'sweep'"):
        parse_bench_config({k: v for k, v in GRID.items() if k != "sweep"})
    preset = load_bench_config("move-adaptive")
    rates = sorted(a.x for a in preset.attacks if a.curve == "Direct-copy")
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.3) and len(rates) >= 5


def record(seed: int, setting: str, row: str, statistic: float, p: float, paper_p: float, effect: float) -> dict:
    return {"seed": seed, "method": "move", "setting": setting, "row": row, "outcome": "stolen" if p < 0.01 else
            "not stolen", "p_value": p, "statistic": statistic, "panel_mean": 0.05, "panel_sd": 0.04,
            "statistic_name": "mean meta-classifier output", "suspect_test_accuracy": 0.8 + statistic / 100,
            "fidelity": 0.9, "victim_test_accuracy": 0.84, "benign_test_accuracy": 0.84, "stolen_truth": True,
            "paper": {"outcome": "stolen" if paper_p < 0.01 else "not stolen", "p_value": paper_p, "effect": effect}}


def test_the_report_tables_and_plots_each_curve_against_x():
    config = parse_bench_config(GRID)
    records = [record(seed, setting, row, statistic, p, p / 10, statistic - 0.05)
               for seed in (0, 1) for setting in ("white-box", "black-box")
               for row, statistic, p in (("Copy", 0.95, 1e-6), ("Copy > 10%", 0.40 + seed / 10, 0.02),
                                         ("Distillation", 0.1, 0.4))]
    run = BenchRun(config, None, records, len(records), 0, 0, 1.0)  # type: ignore[arg-type]
    text = markdown(run)
    assert "## Against the sample rate" in text and "### move, white-box" in text
    assert "| Copy | 0 | 0.8095 [0.8095, 0.8095] | 0.950 [0.950, 0.950] | detected 2/2 |" in text
    assert "| Copy | 0.1 | " in text and "**detected 0/2**" in text and "+0.400 [+0.350, +0.450]" in text
    assert "| Distillation | 0" not in text  # not a point of any curve
    picture = sweep_png(run)
    assert picture is not None and picture[:8] == b"\x89PNG\r\n\x1a\n"
    no_sweep = parse_bench_config({k: v for k, v in GRID.items() if k not in ("sweep", "attacks")}
                                  | {"attacks": [{"label": "Copy", "attack": "copy"}]})
    assert "Against the" not in markdown(BenchRun(no_sweep, None, [], 0, 0, 0, 1.0))  # type: ignore[arg-type]


def test_finetune_fraction_trains_on_a_seeded_share(bars_task, single_thread):
    from modelprove.attacks import run_attack
    from modelprove.data import seeded_share
    from modelprove.methods.common import fresh_model

    defender, attacker, _ = bars_task
    share = seeded_share(attacker, 0.25, seed=3)
    assert len(share) == 200 and share.indices.equal(seeded_share(attacker, 0.25, seed=3).indices)
    assert (share.indices.diff() > 0).all() and not share.indices.equal(seeded_share(attacker, 0.25, seed=4).indices)
    _, lineage = run_attack("finetune:fraction=0.25,epochs=1", fresh_model("cnn_small", defender, 0), attacker, seed=3)
    assert lineage["stages"][0]["samples"] == 200
    with pytest.raises(Exception, match="fraction"):
        run_attack("finetune:fraction=0", fresh_model("cnn_small", defender, 0), attacker)
