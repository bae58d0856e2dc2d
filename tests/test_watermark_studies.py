"""Key-sample watermark studies as bench grids: removal curves, [[studies]], their jobs and their report."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from modelprove.bench import BenchConfigError, load_bench_config, parse_bench_config, recipe_key
from modelprove.bench.runner import plan_grid
from modelprove.bench.studies import STUDIES, plan_studies

DATA = {"dataset": "x", "defender": "d0", "attacker": "a0", "test": "t0"}
GRID = {
    "name": "unit-wm",
    "seeds": [0, 1],
    "settings": ["label-only"],
    "data": {"dataset": "mnist-digits", "defender_limit": 100},
    "training": {"arch": "lenet5", "epochs": 1},
    "methods": [{"name": "blind-watermark"}, {"name": "adi"}, {"name": "move"}],
    "attacks": [{"label": "Direct-copy", "attack": "copy"},
                {"label": "FT", "attack": "finetune:epochs=2,lr=0.001,schedule=constant", "repeat": 3}],
    "independents": [{"arch": "mlp", "seeds": [300]}],
    "studies": [{"name": "key-samples"}, {"name": "key-transfer"}, {"name": "key-detector", "methods": ["adi"],
                                                                    "set": {"detector_seeds": 2}}],
}


def grid(**changes) -> dict:
    return json.loads(json.dumps({**GRID, **changes}))


def test_a_repeated_attack_is_a_curve_of_chains_sharing_their_stages():
    config = parse_bench_config(grid())
    curve = [a for a in config.attacks if a.curve]
    assert [a.label for a in curve] == ["FT, 2 epochs", "FT, 4 epochs", "FT, 6 epochs"]
    assert [a.x for a in curve] == [2.0, 4.0, 6.0] and {a.curve for a in curve} == {"FT"}
    assert curve[2].attack == ">".join(["finetune:epochs=2,lr=0.001,schedule=constant"] * 3)
    _, suspects, _ = plan_grid(config, DATA)
    # each point's chain starts with the point before's: one cached model per stage, never retrained
    for seed in (0, 1):
        chains = [suspects[(seed, "adi", a.label)] for a in curve]
        assert recipe_key(chains[2][1]) == recipe_key(chains[1][-1]) and recipe_key(chains[1][0]) == recipe_key(chains[0][-1])
    # a stage that names no epochs counts stages
    stages = parse_bench_config(grid(attacks=[{"label": "P", "attack": "prune:rate=0.5", "repeat": 2}]))
    assert [a.label for a in stages.attacks] == ["P, 1 stages", "P, 2 stages"]


@pytest.mark.parametrize("change, field", [
    ({"attacks": [{"label": "FT", "attack": "finetune", "repeat": 0}]}, "attacks.0..repeat"),
    ({"attacks": [{"label": "A", "attack": "copy"}, {"label": "A", "attack": "finetune"}]}, "attacks"),
    ({"studies": [{"name": "nope"}]}, "studies.0..name"),
    ({"studies": [{"name": "key-detector", "set": {"nope": 1}}]}, "studies.0..set"),
    ({"studies": [{"name": "key-detector", "set": {"detector_seeds": "three"}}]}, "studies.0..set"),
    ({"studies": [{"name": "key-samples", "methods": ["zhang-noise"]}]}, "studies.0..methods"),
    ({"studies": [{"name": "key-samples", "when": "now"}]}, "studies.0..when"),
])
def test_grid_errors_name_the_field(change, field):
    with pytest.raises(BenchConfigError, match=f"field '{field}"):
        parse_bench_config(grid(**change), source="grid.toml")


def test_studies_are_planned_per_protection_of_the_methods_they_apply_to():
    config = parse_bench_config(grid())
    protections, _, _ = plan_grid(config, DATA)
    plans = plan_studies(config, protections, None)
    by = {(p["study"], p["seed"], p["method"]) for p in plans}
    # key studies only for key-sample watermarks (not MOVE); key-detector only where the grid names it
    assert by == {(s, seed, m) for s in ("key-samples", "key-transfer") for seed in (0, 1)
                  for m in ("blind-watermark", "adi")} | {("key-detector", seed, "adi") for seed in (0, 1)}
    transfer = [p for p in plans if p["study"] == "key-transfer"]
    assert all([o["seed"] for o in p["others"]] == [1 - p["seed"]] for p in transfer)
    assert len({p["key"] for p in plans}) == len(plans)
    detector = next(p for p in plans if p["study"] == "key-detector")
    assert detector["params"] == {**STUDIES["key-detector"].defaults, "detector_seeds": 2}
    # the key sees the parameters and the protection, not the labels
    changed = parse_bench_config(grid(studies=[{"name": "key-detector", "methods": ["adi"], "set": {"detector_seeds": 3}}]))
    assert {p["key"] for p in plan_studies(changed, protections, None)}.isdisjoint({detector["key"]})
    assert plan_studies(config, protections, ["adi"]) == [p for p in plans if p["method"] == "adi"]
    # a parameter added later leaves the key of records made before it alone at its default, not otherwise
    def keys(**more):
        entry = {"name": "key-detector", "methods": ["adi"], "set": {"detector_seeds": 2, **more}}
        return {p["key"] for p in plan_studies(parse_bench_config(grid(studies=[entry])), protections, None)}
    assert "reference_features" in STUDIES["key-detector"].later
    assert keys(reference_features=False) == {p["key"] for p in plans if p["study"] == "key-detector"}
    assert keys(reference_features=True).isdisjoint(keys(reference_features=False))


def test_study_jobs_come_after_the_protections_they_measure():
    from modelprove.bench.executors import check_order
    from modelprove.bench.runner import _Grid  # noqa: PLC2701 - the job plan is the runner's own

    g = _Grid.__new__(_Grid)
    g.config = parse_bench_config(grid())
    g.data = DATA
    g.protections, g.suspect_recipes, g.plan = plan_grid(g.config, g.data)
    g.studies = {p["key"]: p for p in plan_studies(g.config, g.protections, None)}
    g.cache = SimpleNamespace(entry_seconds=lambda kind, recipe: None)
    g.panel_members = lambda: [({"kind": "panel", "member": i}, None) for i in range(2)]
    jobs = g.jobs([], list(g.studies.values()))  # every cell verified already: only the studies remain
    check_order(jobs)
    by_key = {job.key: job for job in jobs}
    studies = [job for job in jobs if job.kind == "study"]
    assert len(studies) == len(g.studies) and {job.kind for job in jobs} == {"benign", "panel", "protection", "study"}
    for job in studies:
        plan = g.studies[job.payload]
        needs = {by_key[d].payload for d in job.deps if by_key[d].kind == "protection"}
        assert needs == {(p["seed"], p["entry"].label) for p in (plan["protection"], *plan["others"])}


def _record(row, method, seed, statistic, outcome="stolen", attack=None, **extra):
    return {"row": row, "method": method, "seed": seed, "setting": "label-only", "statistic": statistic,
            "outcome": outcome, "paper": {"outcome": outcome, "p_value": 0.5}, "p_value": 0.001,
            "attack": attack, "suspect_test_accuracy": 0.8, "fidelity": 0.9, "victim_test_accuracy": 0.85,
            "benign_test_accuracy": 0.86, "panel_mean": 0.1, "panel_sd": 0.02, **extra}


def test_report_draws_the_removal_curve_and_every_study():
    from modelprove.bench.report import detector_roc_png, key_samples_png, markdown, removal_curve_png

    config = parse_bench_config(grid(methods=[{"name": "blind-watermark"}, {"name": "adi"}]))
    records = []
    for seed in (0, 1):
        for method, start in (("blind-watermark", 0.97), ("adi", 0.6)):
            records.append(_record("Direct-copy", method, seed, start, attack="copy"))
            for k, x in enumerate((2, 4, 6)):
                records.append(_record(f"FT, {x} epochs", method, seed, start - 0.3 * (k + 1),
                                       "stolen" if k == 0 else "not stolen", attack="finetune"))
    studies = [
        {"study": "key-samples", "seed": 0, "method": "blind-watermark",
         "result": {"keys": 100, "key_accuracy": 0.97, "benign_key_accuracy": 0.11, "originals_on_targets": 0.15,
                    "psnr_db": 31.2, "ssim": 0.99, "mean_abs_levels": 3.0, "max_abs_levels": 40.0, "targets": 10,
                    "panel": {"lenet5": {"mean": 0.1, "sd": 0.02, "victim": 0.97}}, "key_exposures": 2000.0,
                    "examples": {"keys": [[[[10] * 28] * 28]] * 2, "originals": [[[[0] * 28] * 28]] * 2, "targets": [1, 2]},
                    "discriminator": {"accuracy": 0.52, "auc": 0.55, "images": 1000},
                    "embedding": {"steps": 10000, "seconds": 600, "cpu_seconds": 360, "key_exposures": 2000.0, "encoder_updates": 10000,
                                  "history": [{"d": 1.3, "d_accuracy": 0.6, "psnr": 30.0, "ssim": 0.01, "host": 0.5}]}}},
        {"study": "key-detector", "seed": 0, "method": "adi",
         "result": {"thief_clean": 1000, "held_out": 1000, "seeds": [0, 1], "params": STUDIES["key-detector"].defaults,
                    "rows": [{"generator": "the method's", "thief_keys": 1000, "dense": [0.99, 1.0],
                              "feature": [0.97, 0.98], "scores": {"dense": ([0.9, 0.8], [0.1, 0.2]),
                                                                  "feature": ([0.7, 0.6], [0.5, 0.4])}}]}},
        {"study": "key-forgery", "seed": 0, "method": "adi",
         "result": {"forged": 1000, "how": "new abstract images", "host": 0.11, "benign": 0.1, "real": 0.6}},
        {"study": "key-transfer", "seed": 0, "method": "adi",
         "result": {"own": 0.6, "hosts": [{"host_seed": 1, "key_accuracy": 0.08, "outcome": "not stolen",
                                           "p_value": 0.7, "paper_outcome": "not stolen"}]}},
        {"study": "key-transfer", "seed": 1, "method": "adi",
         "result": {"own": 0.62, "hosts": [{"host_seed": 0, "key_accuracy": 0.35, "outcome": "stolen",
                                           "p_value": 0.001, "paper_outcome": "not stolen"}]}},
    ]
    run = SimpleNamespace(config=config, records=records, studies=studies, missing=0, seconds=60, cells_run=0,
                          cache_hits=0, cache_misses=0, build_seconds=0, verify_seconds=0, history=[])
    text = markdown(run)
    curve = text.split("## Removal curve: FT")[1].split("\n## ")[0]
    assert "| method | 0 | 2 | 4 | 6 |" in curve
    assert "| blind-watermark | 0.97 | 0.67 (2/2 · 2/2) | 0.37 (0/2 · 0/2) | 0.07 (0/2 · 0/2) |" in curve
    assert "| adi | 0.60 | 0.30 (2/2 · 2/2) |" in curve
    # the verification table keeps only the curve's last point
    assert "| FT, 6 epochs | adi |" in text and "| FT, 2 epochs | adi |" not in text
    assert "| blind-watermark | 0 | 10000 | 2000.0 | 0.520 (1000 + 1000) | 0.550 | 31.2 | 0.990 | 10.0 / 6.0 |" in text
    # a record without the benign model's detector (made before it existed) shows none
    assert "| adi | the method's | 0.995 [0.990, 1.000] | 0.975 [0.970, 0.980] | — |" in text
    assert "| adi | new abstract images (1000) | 0.110 | 0.100 | 0.600 |" in text
    assert "accused by the null panel 1 of 2, by the paper's test 0 of 2" in text
    assert "| seed 1 | 0.35 | 0.62 |" in text
    assert "| blind-watermark | 100 | 2000 | 0.970 | 0.110 | 0.150 | 31.2 | 0.990 | 3.0 / 40 | lenet5 0.100 ± 0.020 |" in text
    for picture in (removal_curve_png(run), detector_roc_png(run), key_samples_png(run)):
        assert picture[:4] == b"\x89PNG"


def test_watermarks_preset_runs_the_papers_protocol_and_studies():
    config = load_bench_config("watermarks-fmnist")
    curve = [a for a in config.attacks if a.curve]
    assert curve and curve[-1].x == 100 and "schedule=constant" in curve[0].attack
    from modelprove.methods import METHODS

    # every study of the key-sample watermarks (the trigger watermarks' study is another grid's)
    assert {s.name for s in config.studies} == {name for name, study in STUDIES.items() if study.applies(METHODS["adi"])}
    assert not STUDIES["trigger-learning"].applies(METHODS["adi"])
    blind = next(m for m in config.methods if m.name == "blind-watermark")
    assert blind.set["epochs"] == 100 and blind.set["host_schedule"] == "step"  # the paper's schedule
    # the baselines' hosts and the benign model train as long, and see each key sample as often (2,000 times)
    assert config.training.epochs == 100 and all(m.set.get("key_repeats") == 20 for m in config.methods if m != blind)


def test_finetune_schedule_is_checked_and_used(bars_task, single_thread):
    from modelprove.attacks import run_attack
    from modelprove.core.errors import ModelproveError
    from modelprove.models import build_model

    with pytest.raises(ModelproveError, match="schedule"):
        run_attack("finetune:schedule=linear", build_model("mlp", 1, 4, (28, 28)), bars_task[1], seed=0)
    victim = build_model("mlp", 1, 4, (28, 28))
    _, lineage = run_attack("finetune:epochs=1,schedule=constant", victim, bars_task[1].subset(torch.arange(100)), seed=0)
    assert lineage["stages"][-1]["training"]["config"]["schedule"] == "constant"


def test_forged_and_thief_key_samples_follow_each_method(bars_task):
    """The counterfeiter's and the thief's key samples: made the method's way, never the owner's own."""
    from modelprove.adversary.key_detector import thief_key_samples
    from modelprove.adversary.key_forgery import forged_keys
    from modelprove.data.substitute import load_substitute
    from modelprove.methods import key_watermarks as kw
    from modelprove.methods.key_samples import KeySet

    defender, attacker, test = bars_task
    card = SimpleNamespace(num_classes=4)
    originals = defender.images[:10]
    shifted = (originals.int() + 3).clamp(0, 255).to(torch.uint8)
    blind = SimpleNamespace(method="blind-watermark", keys=KeySet(shifted, torch.arange(10) % 4, originals=originals),
                            host_card=card)
    forged, _ = forged_keys(blind, test.images[:50], seed=0)
    # each forged image is another image plus one key's difference (+3 grey levels here), with that key's label
    assert len(forged) == 50 and set(forged.targets.tolist()) <= {0, 1, 2, 3}
    gained = forged.images.int() - test.images[:50].int()
    assert ((gained == 3) | (test.images[:50].int() + 3 > 255)).all()

    content = kw.ZhangContentConfig(target_label=2)
    opened = SimpleNamespace(method="zhang-content", config=content, host_card=card,
                             keys=kw.make_key_samples(content, defender, 10, seed=0))
    forged, _ = forged_keys(opened, test.images[:20], seed=1)
    assert torch.equal(forged.images, kw.stamp(test.images[:20], content, 1)) and (forged.targets == 2).all()
    thief = thief_key_samples(opened, attacker, 30, seed=5)
    assert thief.shape == (30, 1, 28, 28) and (thief >= 0).all()

    unrelated = kw.ZhangUnrelatedConfig(target_label=3)
    keys = kw.make_key_samples(unrelated, defender, 20, seed=0)
    opened = SimpleNamespace(method="zhang-unrelated", config=unrelated, host_card=card, keys=keys)
    owned = {bytes(image.numpy().tobytes()) for image in keys.images}
    forged, _ = forged_keys(opened, test.images[:40], seed=2)
    digits = load_substitute("mnist-digits", like=defender)
    ones = {bytes(image.numpy().tobytes()) for image in digits.images[digits.labels == 1]}
    assert len(forged) == 40 and (forged.targets == 3).all()
    assert all(bytes(i.numpy().tobytes()) in ones - owned for i in forged.images)
    thief = thief_key_samples(opened, attacker, 200, seed=3)
    assert not any(bytes(i.numpy().tobytes()) in owned for i in thief)


def test_a_methods_set_wins_over_the_grids_training():
    """A method entry's ``set`` (e.g. the blind watermark's 100 epochs) overrides [training]'s value of the same
    field; before, [training] won silently and a 5-epoch grid built a 5-epoch blind watermark."""
    from modelprove.bench.runner import method_config
    from modelprove.methods import METHODS

    config = parse_bench_config(grid(training={"arch": "lenet5", "epochs": 5, "augmentation": "crop"}))
    made = method_config(METHODS["blind-watermark"], config, 0, {"epochs": 100, "augmentation": "none"})
    assert (made.epochs, made.augmentation, made.arch) == (100, "none", "lenet5")
    assert method_config(METHODS["blind-watermark"], config, 0, {}).epochs == 5


def test_trigger_learning_report_shows_victim_surrogate_benign_and_the_control():
    from modelprove.bench.report import study_sections

    def record(seed, method, **result):
        return {"study": "trigger-learning", "seed": seed, "method": method, "result": result}

    run = SimpleNamespace(config=SimpleNamespace(methods=[SimpleNamespace(name="gradient-matching", label="gm"),
                                                                   SimpleNamespace(name="gradient-matching", label="gm 250")]),
                          studies=[record(0, "gm", victim_trigger_success_rate=0.003, surrogate_trigger_success_rate=0.017,
                                          benign_trigger_success_rate=0.02, victim_test_accuracy=0.79,
                                          alignment_loss_before=0.598, alignment_loss_after=[0.31, 0.298],
                                          max_perturbation_pixels=16,
                                          controls=[{"levels": 64, "trigger_success_rate": 0.427, "test_accuracy": 0.8175},
                                                    {"levels": 16, "trigger_success_rate": 0.021, "test_accuracy": 0.84}]),
                                   record(0, "gm 250", victim_trigger_success_rate=0.002, max_perturbation_pixels=16,
                                          controls=[])])
    text = "\n".join(study_sections(run))
    assert "| gm | 0.003 | 0.017 | 0.020 | 0.790 | 0.598 -> 0.298 | 16 |" in text
    assert "| gm 250 | 0.002 | — | — | — | — | 16 |" in text
    # the controls in order of amplitude
    assert text.index("| 16 | 0.021 | 0.840 |") < text.index("| 64 | 0.427 | 0.818 |")


def test_gradient_matching_preset_measures_each_protection_once_and_the_control_on_the_default():
    config = load_bench_config("gradient-matching-fmnist")
    protections, _, _ = plan_grid(config, DATA)
    plans = plan_studies(config, protections, None)
    assert sorted(p["method"] for p in plans) == sorted(m.label for m in config.methods)  # one record each
    with_controls = [p["method"] for p in plans if p["params"]["controls"]]
    assert with_controls == [config.methods[0].label]
