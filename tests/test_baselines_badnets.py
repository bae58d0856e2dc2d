"""BadNets watermark (MOVE's baseline) on the tiny bars task: it verifies its own victim, clears an
unrelated model, and its t-test matches a hand computation (well under 60 s on one thread)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from scipy import stats

from modelprove.access import BlackBoxAccess, WhiteBoxAccess
from modelprove.core.errors import ModelproveError, ProtectionError, SuspectError
from modelprove.core.seeding import generator
from modelprove.data.style import PatchTransformer, stamp_patch
from modelprove.methods import METHODS, badnets, move
from modelprove.models import predict_proba
from modelprove.training import train

# cnn_small (BatchNorm) learns the trigger in 12 epochs for every seed we tried (trigger success rate
# 0.99-1.0, copy p <= 4e-18 white-box, over 10 seeds and AVX2 kernels); LeNet-5 at lr 0.05 sometimes
# diverged (test accuracy 0.49 for one seed), and at lr 0.02 learned the trigger in 0 to 84% of images.
CONFIG = dict(arch="cnn_small", epochs=12, verification_pool=150, m=10, m_black_box=100)


@pytest.fixture(scope="module")
def protection(tmp_path_factory, bars_task, tiny_panel, single_thread):
    defender, _, test = bars_task
    out = tmp_path_factory.mktemp("badnets") / "protection"
    made = badnets.protect(defender, test, out, badnets.BadNetsConfig(**CONFIG), panel=tiny_panel)
    return out, made


@pytest.fixture(scope="module")
def unrelated(bars_task, single_thread):
    """A model that never saw the watermark: the attacker's half of the task, another seed."""
    _, attacker, _ = bars_task
    model = badnets.new_model(CONFIG["arch"], attacker, 123)
    train(model, attacker, badnets.BadNetsConfig(**CONFIG).train_config(123), show_progress=False)
    return model


def test_stamp_patch_is_a_white_corner_square_and_patch_transformer_still_stamps_it():
    floats = torch.rand(2, 3, 8, 8) * 0.5
    stamped = stamp_patch(floats, 3)
    assert torch.equal(stamped[..., 5:, 5:], torch.ones(2, 3, 3, 3))
    assert torch.equal(stamped[..., :5, :], floats[..., :5, :]) and torch.equal(stamped[..., :, :5], floats[..., :, :5])
    assert not torch.equal(floats[..., 5:, 5:], torch.ones(2, 3, 3, 3))  # the input is not modified
    uint8 = torch.zeros(1, 1, 6, 6, dtype=torch.uint8)
    assert stamp_patch(uint8, 2)[0, 0].tolist()[-1] == [0, 0, 0, 0, 255, 255]
    assert torch.equal(PatchTransformer(size=3)(floats), stamped)
    with pytest.raises(ModelproveError, match="does not fit"):
        stamp_patch(floats, 9)


def test_poisoning_stamps_and_relabels_exactly_the_chosen_rows(bars_task):
    defender = bars_task[0]
    before = defender.images.clone()
    poisoned, rows = badnets.poison_badnets(defender, 0.1, target=2, patch_size=3, seed=5)
    assert len(rows) == 80 and len(set(rows.tolist())) == 80
    assert torch.equal(defender.images, before)  # the defender's data is untouched
    assert (poisoned.labels[rows] == 2).all()
    assert (poisoned.images[rows][..., -3:, -3:] == 255).all()
    rest = torch.ones(len(defender), dtype=torch.bool)
    rest[rows] = False
    assert torch.equal(poisoned.images[rest], defender.images[rest])
    assert torch.equal(poisoned.labels[rest], defender.labels[rest])


def test_protection_directory_and_results(protection):
    out, made = protection
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "badnets"
    assert {"victim.safetensors", "victim.json", "verification.safetensors", "badnets.safetensors"} <= set(manifest["files"])
    assert manifest["results"]["poisoned"] == 80  # 10% of 800
    assert manifest["results"]["victim_test_accuracy"] > 0.9  # the watermark costs little on an easy task
    assert manifest["results"]["victim_trigger_success_rate"] > 0.9  # and the victim learned it (measured >= 0.99)
    assert manifest["results"]["victim_pool_mu_triggered"] > manifest["results"]["victim_pool_mu_benign"]
    opened = badnets.open_protection(out)
    assert len(opened.pool_images) == 150 and (opened.pool_labels != 0).all()  # no target-class images
    assert opened.config.m == 10 and opened.config.m_black_box == 100
    assert made.victim is not None and made.results["seconds"]["train_victim"] > 0


def test_victim_and_copy_are_flagged_white_box_and_black_box(protection):
    out, made = protection
    opened = badnets.open_protection(out)
    white = badnets.verify(opened, copy.deepcopy(opened.victim), suspect_name="copy")
    assert white.setting == "white-box" and white.stolen and white.p_value < 0.01 and white.statistic > 0.5
    assert white.queries is None and white.samples == 10 and white.effect_name == "panel_z"
    assert white.panel["architecture"] == "cnn_small" and white.panel["k"] == 4 and white.self_test["detected"]
    black = badnets.verify(opened, BlackBoxAccess.from_model(made.victim, name="api"))
    assert black.setting == "black-box" and black.stolen and black.samples == 100
    # m triggered images and their m benign originals, and the competence check's clean images
    assert black.queries == 200 + black.competence["images"]
    paper = badnets.verify(opened, BlackBoxAccess.from_model(made.victim, name="api"), rule="paper")
    assert paper.stolen and paper.effect_name == "delta_mu" and paper.effect > 0.5


def test_unrelated_model_is_cleared(protection, unrelated):
    """It does not carry the trigger: its target-class probability does not move (|delta_mu| < 0.01,
    the victim's is about 1). The null-panel rule clears it in both settings and for every seed. The
    paper's paired t-test is not asserted black-box: at m = 100 it calls differences of 1e-5 significant,
    so it flags some independent models (over 10 seeds of this test its p ranged 0.011-0.98)."""
    out, made = protection
    assert badnets.verify(out, WhiteBoxAccess(made.victim, name="victim"), setting="black-box", rule="paper").effect > 0.5
    for setting in ("white-box", "black-box"):
        paper = badnets.verify(out, WhiteBoxAccess(unrelated, name="unrelated"), setting=setting, rule="paper")
        assert abs(paper.effect) < 0.01, paper
        for seed in range(5):
            verdict = badnets.verify(out, WhiteBoxAccess(unrelated, name="unrelated"), setting=setting, seed=seed)
            assert verdict.outcome == "not stolen", (setting, seed, verdict.reason)


def test_a_victim_that_never_learned_its_trigger_makes_no_claim(protection, unrelated):
    """The premise check (TriggerMethod.premise): the protected victim must answer its own trigger. With the
    unrelated model in the victim's place, even a suspect that carries the trigger (the real victim) is
    inconclusive under the null-panel rule, and white-box no model is run at all; the paper's t-test is left
    as published and still flags the carrier."""
    out, made = protection
    opened = badnets.open_protection(out)
    assert badnets.BADNETS.premise(opened, opened.config) is None  # the real victim learned it (success >= 0.9)
    opened.victim = unrelated
    why = badnets.BADNETS.premise(opened, opened.config)
    assert why is not None and "did not learn its trigger" in why and "McNemar" in why
    carrier = WhiteBoxAccess(copy.deepcopy(made.victim), name="carrier")
    for setting in ("white-box", "black-box"):
        verdicts = badnets.BADNETS.verify_rules(opened, carrier, setting=setting)
        assert verdicts["panel"].outcome == "inconclusive" and verdicts["panel"].reason == why, setting
        assert verdicts["paper"].stolen, setting
    api = BlackBoxAccess.from_model(made.victim, name="api")
    panel_only = badnets.verify(opened, api, competence=0.0)
    assert panel_only.outcome == "inconclusive" and api.queries == 0  # nothing to measure: nothing asked


def test_t_test_matches_a_hand_computation(protection, unrelated):
    out, _ = protection
    opened = badnets.open_protection(out)
    seed, m = 7, 10
    rows = torch.randperm(150, generator=generator(seed))[:m]
    benign = opened.pool_images[rows].float() / 255
    triggered = benign.clone()
    triggered[:, :, -3:, -3:] = 1.0
    for model in (opened.victim, unrelated):
        # the verdict's float32 probabilities, taken to float64 as the test takes them; then by hand
        p_t = predict_proba(model, triggered)[:, 0].double().numpy()
        p_b = predict_proba(model, benign)[:, 0].double().numpy()
        differences = p_t - p_b
        t = differences.mean() / (differences.std(ddof=1) / np.sqrt(m))
        expected = stats.t.sf(t, df=m - 1)  # one-sided: H1 mu_T > mu_B
        verdict = badnets.verify(opened, model, seed=seed, rule="paper")
        # float64 arithmetic on the same float32 inputs: 1e-4 is far above any summation-order effect
        assert verdict.p_value == pytest.approx(expected, rel=1e-4)
        assert verdict.effect == pytest.approx(differences.mean(), abs=1e-6)
        assert verdict.details["mu_suspect"] == pytest.approx(p_t.mean(), abs=1e-6)
        assert verdict.details["mu_reference"] == pytest.approx(p_b.mean(), abs=1e-6)


def test_same_seed_same_verdict_and_options(protection):
    out, made = protection
    opened = badnets.open_protection(out)
    suspect = copy.deepcopy(made.victim)
    with torch.no_grad():
        for p in suspect.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a, b = badnets.verify(opened, suspect, seed=3), badnets.verify(opened, suspect, seed=3)
    assert a.p_value == b.p_value and a.effect == b.effect
    assert badnets.verify(opened, suspect, m=25).samples == 25
    with pytest.raises(ModelproveError, match="no option poison_rate"):
        badnets.verify(opened, suspect, poison_rate=0.2)
    with pytest.raises(ModelproveError, match=r"verification_pool \(150\) must hold at least"):
        badnets.verify(opened, suspect, m=151)


def test_label_only_suspect_and_wrong_protection_are_refused(protection, tmp_path):
    out, made = protection
    label_only = BlackBoxAccess.from_model(made.victim, name="labels").as_label_only()
    with pytest.raises(SuspectError, match="needs black-box access"):
        badnets.verify(out, label_only)
    with pytest.raises(ProtectionError, match="not 'move'"):
        move.open_protection(out)
    # the manifest guards every file: a changed verification pool is refused
    tampered = tmp_path / "tampered"
    import shutil

    shutil.copytree(out, tampered)
    (tampered / "verification.safetensors").write_bytes(b"x")
    with pytest.raises(ProtectionError, match="does not match its sha256"):
        badnets.open_protection(tampered)


def test_parameter_checks(bars_task, tmp_path):
    defender, _, test = bars_task
    for bad, match in (({"m": 1}, "m must be at least 2"), ({"poison_rate": 0.0}, "poison_rate"),
                       ({"patch_size": 0}, "patch_size"), ({"alpha": 1.5}, "alpha"),
                       ({"verification_pool": 50}, "verification_pool"), ({"target": -1}, "target")):
        with pytest.raises(ModelproveError, match=match):
            badnets.BadNetsConfig(**bad)
    with pytest.raises(ModelproveError, match="target = 4 is not a class"):  # before any training
        badnets.protect(defender, test, tmp_path / "p", badnets.BadNetsConfig(target=4))
    with pytest.raises(ModelproveError, match="outside the target class"):
        badnets.protect(defender, test.subset(range(100)), tmp_path / "q", badnets.BadNetsConfig(verification_pool=120))
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()


def test_registered_for_the_cli_and_the_benchmark():
    spec = METHODS["badnets"]
    assert spec.access == ("white-box", "black-box")
    assert spec.verify_options == ("m", "m_black_box", "alpha")
    fields = spec.config.__dataclass_fields__
    assert {"arch", "epochs", "batch_size", "lr", "augmentation", "seed", "alpha", "m", "m_black_box"} <= set(fields)
    assert spec.config().alpha == 0.01 and spec.config().m == 10 and spec.config().poison_rate == 0.1


def test_cli_protects_and_verifies_through_the_registry(tmp_path, bars_task, tiny_panel, single_thread):
    """`modelprove protect --method badnets` and `modelprove verify` on the bars task saved as npz."""
    import numpy as np
    from typer.testing import CliRunner

    from modelprove.cli.main import app

    defender, _, test = bars_task
    for part, name in ((defender, "bars_train.npz"), (test, "bars_test.npz")):
        np.savez(tmp_path / name, x=part.images.numpy(), y=part.labels.numpy())
    runner = CliRunner()
    result = runner.invoke(app, ["protect", "--method", "badnets", "--data", str(tmp_path / "bars_train.npz"),
                                 "--out", str(tmp_path / "prot"), "--set", "arch=cnn_small", "--set", "epochs=12",
                                 "--set", "verification_pool=150", "--set", "poison_rate=0.2",
                                 "--panel-size", "4", "--panel-archs", "lenet5,cnn_small", "--panel-epochs", "3",
                                 "--panel-store", tiny_panel.store])
    assert result.exit_code == 0, result.output
    assert "victim test accuracy" in result.output
    assert "did not learn its trigger" not in result.output  # the premise holds: no warning
    result = runner.invoke(app, ["verify", "--protection", str(tmp_path / "prot"), "--access", "black-box",
                                 "--suspect", str(tmp_path / "prot" / "victim.safetensors"), "--m", "50",
                                 "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 0, result.output
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert verdict["method"] == "badnets" and verdict["stolen"] is True
    assert verdict["samples"] == 50 and verdict["setting"] == "black-box"
    assert verdict["queries"] == 100 + verdict["competence"]["images"]
