"""SAC (sac-w, sac-m): the correlation distance by hand, the samples, and protect -> verify on the bars task."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from modelprove.access import local_access
from modelprove.core.errors import ModelproveError
from modelprove.core.verdict import STOLEN
from modelprove.data import cutmix
from modelprove.methods import METHODS, sac
from modelprove.methods.base import StoredCalibration
from modelprove.methods.common import fresh_model
from modelprove.methods.protection import Protection
from modelprove.models import load_model, predict_labels
from modelprove.training import TrainConfig, train

SMALL = dict(surrogate_archs="lenet5", reference_archs="lenet5", held_out_surrogates=1, held_out_references=1,
             epochs=2, n=100)
SETTINGS = ("black-box", "label-only")


def test_correlation_distance_by_hand():
    source = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    suspect = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    r = 1 / math.sqrt(2)
    # cosines: source (1,2) = 0, (1,3) = (2,3) = 1/√2; suspect (1,2) = 1, (1,3) = (2,3) = 0
    assert torch.allclose(sac.correlation(source), torch.tensor([[1, 0, r], [0, 1, r], [r, r, 1]]).double(), atol=1e-6)
    rows = sac.row_distances(source, suspect)
    # |ΔC| rows: (0, 1, r), (1, 0, r), (r, r, 0), each averaged over the n = 3 samples
    assert rows.tolist() == pytest.approx([(1 + r) / 3, (1 + r) / 3, 2 * r / 3], abs=1e-6)
    assert float(rows.mean()) == pytest.approx((2 + 4 * r) / 9, abs=1e-6)  # Dist = Σ|ΔC| / n²
    # label-only: the one-hot of the top-1 label, so C(i, j) is 1 for two samples of one label, else 0
    onehot = sac.outputs(torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1]]), "label-only")
    assert torch.allclose(sac.correlation(onehot), torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 1]]).double(), atol=1e-6)


def test_cutmix_pastes_one_seeded_box():
    x, other = torch.zeros(64, 1, 12, 10), torch.ones(64, 1, 12, 10)
    mixed = cutmix(x, other, torch.Generator().manual_seed(3))
    assert torch.equal(mixed, cutmix(x, other, torch.Generator().manual_seed(3)))
    assert not torch.equal(mixed, cutmix(x, other, torch.Generator().manual_seed(4)))
    for image in mixed[:, 0]:
        ys, xs = torch.nonzero(image, as_tuple=True)
        if len(ys):  # the pasted pixels fill their bounding box: one rectangle
            assert len(ys) == (int(ys.max()) - int(ys.min()) + 1) * (int(xs.max()) - int(xs.min()) + 1)
    shares = mixed.mean(dim=(1, 2, 3))
    assert 0.1 < float(shares.mean()) < 0.6 and float(shares.max()) > 0.3  # random areas, some large


@pytest.fixture(scope="module")
def source(bars_task, single_thread):
    defender = bars_task[0]
    model = fresh_model("lenet5", defender, 11)
    train(model, defender, TrainConfig(epochs=4, seed=11), show_progress=False)
    return model


@pytest.fixture(scope="module")
def protections(tmp_path_factory, bars_task, source):
    """Both protections, on a null panel of LeNet-5s trained long enough to be confident: black-box SAC
    compares the shape of probability vectors, and the session's 3-epoch panel has underfit members with
    nearly flat outputs in some draws (MODELPROVE_TEST_SEED=9: accuracies 0.25-0.98, mean top
    probability 0.27-0.42), beside which any confident honest model looks close to the source."""
    from modelprove.methods.panel import PanelConfig

    defender, _, test = bars_task
    root = tmp_path_factory.mktemp("sac")
    panel = PanelConfig(size=4, architectures="lenet5", epochs=8, store=str(root / "panel"))
    for name in ("sac-w", "sac-m"):
        METHODS[name].protect(defender, test, root / name, sac.SacConfig(**SMALL), panel=panel, model=source)
    return root


@pytest.fixture(scope="module")
def suspects(bars_task, source):
    attacker = bars_task[1]
    tuned = copy.deepcopy(source)  # derived: one epoch of fine-tuning on the attacker's data
    train(tuned, attacker, TrainConfig(epochs=1, seed=5, lr=0.01), show_progress=False)
    independent = fresh_model("lenet5", attacker, 4243)  # its own data and seed
    train(independent, attacker, TrainConfig(epochs=3, seed=4243), show_progress=False)
    return {"fine-tuned": tuned, "independent": independent}


def test_sac_w_takes_the_sources_errors_first(bars_task, source):
    test = bars_task[2]
    rows, wrong = sac.wrong_samples(source, test, 40, seed=0)
    errors = predict_labels(source, test.as_float()) != test.labels
    assert len(set(rows.tolist())) == 40 and wrong == min(40, int(errors.sum()))
    assert bool(errors[rows[:wrong]].all()) and not bool(errors[rows[wrong:]].any())


@pytest.mark.parametrize("name", ["sac-w", "sac-m"])
def test_derived_models_are_closer_than_every_honest_lenet5(protections, source, suspects, name):
    spec = METHODS[name]
    opened = spec.open(protections / name)
    stored = StoredCalibration.load(Protection.open(protections / name))
    members = stored.record["panel"]["members"]
    for setting in SETTINGS:
        # each panel model's statistic; the rule compares a suspect with the panel of its architecture
        statistics = stored.tensors[f"panel/{setting}"].double().mean(dim=1)
        archs = [members[i]["arch"] for i in stored.tensors[f"panel/{setting}/members"].tolist()]
        panel = statistics[[a == "lenet5" for a in archs]]
        assert len(panel) >= 3
        copy_verdict = spec.verify(opened, local_access(source, setting, name="copy"), setting=setting)
        assert abs(copy_verdict.statistic) < 1e-6 and copy_verdict.samples == SMALL["n"]
        # no honest model is closer (a tie in SAC-w label-only, where an honest model may give the source's very
        # labels on all its samples: MODELPROVE_TEST_SEED=4, 5, 13); STOLEN, or inconclusive where four honest
        # models spread too widely for the victim itself to stand out, never "not stolen"
        assert copy_verdict.statistic >= float(panel.max())
        assert copy_verdict.outcome == STOLEN or "no power" in copy_verdict.reason, copy_verdict.reason
        assert spec.verify(opened, local_access(source, setting), setting=setting, rule="paper").outcome == STOLEN
        tuned = spec.verify(opened, local_access(suspects["fine-tuned"], setting), setting=setting)
        # the fine-tuned copy closer than every honest model. Only asked of SAC-m: SAC-w's
        # samples sit on the source's boundaries of this easy task (mostly two classes), where fine-tuning
        # moves the outputs as far as an honest model's (MODELPROVE_TEST_SEED audit: label-only 0.50 vs a
        # panel at 0.45-0.51 under seed 1; black-box 0.0102 vs 0.0110 under seed 6).
        if name == "sac-m":
            assert tuned.statistic > float(panel.max()), (setting, tuned.statistic, panel.tolist())
        independent = spec.verify(opened, local_access(suspects["independent"], setting), setting=setting)
        assert independent.outcome != STOLEN, (setting, independent.reason)
        if independent.competence["competent"]:  # then every sample was asked, once
            assert independent.queries == SMALL["n"] + independent.competence["images"]


def test_protection_records_its_samples_and_thresholds(protections):
    manifest = json.loads((protections / "sac-w" / "manifest.json").read_text())
    results = manifest["results"]
    assert manifest["access"] == list(sac.ACCESS) and results["samples"] == SMALL["n"]
    assert 0 <= results["misclassified"] <= SMALL["n"] and results["threshold_source"] == "held-out models"
    assert set(results["thresholds"]) == set(SETTINGS) and all(0 < d < 1 for d in results["thresholds"].values())
    spec = METHODS["sac-m"]
    source, _ = load_model(protections / "sac-m" / spec.model_file)
    verdict = spec.verify(protections / "sac-m", local_access(source, "label-only"), rule="paper", threshold=0.0)
    assert verdict.outcome != STOLEN and verdict.details["threshold"] == 0.0  # d = 0: nothing is below it


def test_config_errors_name_the_fix():
    with pytest.raises(ModelproveError, match="at least 2"):
        sac.SacConfig(n=1)
    with pytest.raises(ModelproveError, match="threshold=D"):
        sac.SacConfig(held_out_references=0)
    assert sac.SacConfig(held_out_references=0, threshold=0.1).threshold == 0.1
    with pytest.raises(ModelproveError, match=r"\[0, 1\]"):
        sac.SacConfig(threshold=2.0)


def test_cli_protects_and_verifies_through_the_registry(tmp_path, bars_task, tiny_panel, source):
    from typer.testing import CliRunner

    from modelprove.cli.main import app
    from modelprove.models import card_for, save_model
    from conftest import save_npz_task

    defender, _, test = bars_task
    save_npz_task(tmp_path, defender, test)
    model = save_model(source, card_for(source, defender.classes), tmp_path / "source.safetensors")
    runner = CliRunner()
    result = runner.invoke(app, ["protect", "--method", "sac-m", "--data", str(tmp_path / "bars_train.npz"),
                                 "--model", str(model), "--out", str(tmp_path / "prot"), "--set", "n=30",
                                 "--set", "held_out_surrogates=1", "--set", "held_out_references=1",
                                 "--set", "epochs=2", "--set", "surrogate_archs=lenet5",
                                 "--set", "reference_archs=lenet5", "--panel-size", "4",
                                 "--panel-archs", "lenet5,cnn_small", "--panel-epochs", "3",
                                 "--panel-store", tiny_panel.store])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["verify", "--protection", str(tmp_path / "prot"), "--access", "label-only",
                                 "--suspect", str(model), "--rule", "paper", "--json", str(tmp_path / "v.json")])
    assert result.exit_code == 0, result.output
    verdict = json.loads((tmp_path / "v.json").read_text())
    assert verdict["method"] == "sac-m" and verdict["stolen"] is True and verdict["setting"] == "label-only"
    assert verdict["samples"] == 30 and verdict["queries"] == 30 + verdict["competence"]["images"]
    result = runner.invoke(app, ["protect", "--method", "sac-w", "--data", str(tmp_path / "bars_train.npz"),
                                 "--out", str(tmp_path / "other")])
    assert result.exit_code == 2 and "--model" in result.output  # SAC fingerprints a given source model
