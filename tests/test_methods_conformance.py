"""Every registered method through protect -> verify on a tiny task, checked against the Verdict contract.

In the spirit of scikit-learn's parametrize_with_checks: a method added to the registry is covered here
without writing a test. It is protected with its config's defaults shrunk for the bars task (fewer
epochs, smaller pools; per-method sizes below only where a default cannot fit the tiny task), calibrated
on the session's small null panel, and verified with a direct copy of its model, an untrained network,
an honest independent model and a constant-output API, in every setting it declares. The contract:

- every verdict is one of the three outcomes, with a reason, the rule, the protection's id and hashes,
  and survives a JSON round trip;
- an untrained random network and a constant-output model are never STOLEN (they are inconclusive:
  not competent models of the task);
- a verdict the rule decided carries the panel it was compared with; queries are counted exactly when
  the suspect was queried (not white-box);
- the same seed gives the same verdict.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from modelprove.access import BlackBoxAccess, LABEL_ONLY, WHITE_BOX, LabelOnlyAccess, local_access
from modelprove.core.verdict import INCONCLUSIVE, OUTCOMES, STOLEN, Verdict
from modelprove.methods import METHODS
from modelprove.methods.common import fresh_model
from modelprove.models import load_model
from modelprove.training import TrainConfig, train

# Sizes for the 800-image bars task; everything else is the config's default.
SHRINK = {"epochs": 3, "m": 5, "m_black_box": 20, "verification_pool": 60, "arch": "lenet5"}
TINY = {
    "move": dict(meta_samples=40, meta_epochs=10, benign_models=1, test_transformed=30),
    "gradient-matching": dict(craft_steps=3, source_samples=50, craft_batch=32),
    "entangled": dict(snnl_layers=1),
    "dataset-inference": dict(regressor_samples=50, verification_pool=30, m_black_box=10, mingd_steps=5,
                              walk_steps=5, walk_directions=3, regressor_epochs=10),
    "blind-watermark": dict(epochs=1, key_fraction=0.02, clean_batch=50),
    "cae": dict(surrogate_archs="lenet5", reference_archs="lenet5", surrogates=1, references=1,
                held_out_surrogates=1, held_out_references=1, epochs=2, steps=5, candidates=30, n=10, eps=0.25),
    "ipguard": dict(surrogate_archs="lenet5", reference_archs="lenet5", held_out_surrogates=1,
                    held_out_references=1, epochs=2, steps=10, n=10),
}
for name in ("sac-w", "sac-m"):
    TINY[name] = dict(surrogate_archs="lenet5", reference_archs="lenet5", held_out_surrogates=1, held_out_references=1,
                      epochs=2)
for name in ("adi", "zhang-content", "zhang-noise", "zhang-unrelated"):
    TINY[name] = dict(key_fraction=0.05, key_repeats=5)


def tiny_config(name: str):
    spec = METHODS[name]
    fields = {f.name for f in dataclasses.fields(spec.config)}
    values = {k: v for k, v in SHRINK.items() if k in fields}
    values.update(TINY.get(name, {}))
    return spec.config(**values)


@pytest.fixture(scope="module")
def source(bars_task):
    """An already trained model, for the methods that fingerprint one (CAE, IPGuard, SAC)."""
    defender = bars_task[0]
    model = fresh_model("lenet5", defender, 11)
    train(model, defender, TrainConfig(epochs=4, seed=11), show_progress=False)
    return model


@pytest.fixture(scope="module")
def suspects(bars_task):
    attacker = bars_task[1]
    honest = fresh_model("cnn_small", attacker, 4242)
    train(honest, attacker, TrainConfig(epochs=3, seed=4242, optimizer="adam", lr=1e-3, augmentation="none"),
          show_progress=False)
    return {"independent": honest, "untrained": fresh_model("lenet5", attacker, 77)}


@pytest.fixture(scope="module", params=sorted(METHODS))
def protected(request, tmp_path_factory, bars_task, tiny_panel, source, single_thread):
    name = request.param
    spec = METHODS[name]
    defender, _, test = bars_task
    out = tmp_path_factory.mktemp(name) / "protection"
    inputs = {"model": source} if "model" in spec.inputs else {}
    spec.protect(defender, test, out, tiny_config(name), panel=tiny_panel, **inputs)
    return name, out


def constant_api(num_classes: int) -> BlackBoxAccess:
    row = torch.full((num_classes,), 0.2 / (num_classes - 1))
    row[0] = 0.8
    return BlackBoxAccess(lambda x: row.repeat(len(x), 1), num_classes=num_classes, input_shape=(1, 28, 28),
                          name="constant")


def check_contract(verdict: Verdict, spec, setting_queried: bool) -> None:
    assert verdict.outcome in OUTCOMES and verdict.reason
    assert verdict.method == spec.name and verdict.rule
    assert len(verdict.protection_id) == 64 and verdict.hashes["protection_manifest"]
    if verdict.outcome != INCONCLUSIVE:
        assert verdict.statistic is not None
        if not verdict.rule.startswith("paper"):  # the null-panel rule: decided against a panel, with a p
            assert verdict.panel is not None and verdict.panel["k"] >= 3 and 0.0 <= verdict.p_value <= 1.0
    if setting_queried:
        assert verdict.queries is not None and verdict.queries > 0
    else:
        assert verdict.queries is None
    again = Verdict.from_dict(json.loads(json.dumps(verdict.to_dict())))
    assert again.outcome == verdict.outcome and again.p_value == verdict.p_value


def test_protection_records_its_calibration(protected):
    name, out = protected
    spec = METHODS[name]
    manifest = json.loads((out / "manifest.json").read_text())
    calibration = manifest["calibration"]
    assert "calibration.safetensors" in manifest["files"] and spec.model_file in manifest["files"]
    assert calibration["competence"]["images"] > 0 and calibration["panel"]["members"]
    for variant, record in calibration["variants"].items():
        assert record["pool"] >= 1 and record["self_test"], variant
        for arch, test in record["self_test"].items():
            assert 0.0 <= test["p_value"] <= 1.0 and isinstance(test["detected"], bool)
    victims = {m["name"] for m in calibration["panel"]["members"]}
    assert len(victims) == len(calibration["panel"]["members"])  # every panel model is its own


def test_every_verdict_keeps_the_contract(protected, suspects):
    name, out = protected
    spec = METHODS[name]
    opened = spec.open(out)
    model, _ = load_model(out / spec.model_file)
    for setting in spec.access:
        for label, suspect in (("copy", model), *suspects.items()):
            verdict = spec.verify(opened, local_access(suspect, setting, name=label), setting=setting, seed=0)
            check_contract(verdict, spec, setting_queried=setting != WHITE_BOX)
            if label == "untrained":
                assert verdict.outcome == INCONCLUSIVE and "competent" in verdict.reason
            for rule in ("paper",):
                paper = spec.verify(opened, local_access(suspect, setting, name=label), setting=setting, seed=0,
                                    rule=rule)
                check_contract(paper, spec, setting_queried=setting != WHITE_BOX)
                assert paper.rule.startswith("paper") and paper.rule != verdict.rule
                if label == "untrained":
                    assert paper.outcome != STOLEN


def test_constant_output_model_is_never_stolen(protected):
    name, out = protected
    spec = METHODS[name]
    opened = spec.open(out)
    api = constant_api(4)
    for setting in spec.access:
        if setting == WHITE_BOX:
            continue
        access = api if setting != LABEL_ONLY else api.as_label_only()
        for rule in ("panel", "paper"):
            verdict = spec.verify(opened, access, setting=setting, seed=0, rule=rule)
            assert verdict.outcome == INCONCLUSIVE and "competent" in verdict.reason, (setting, rule, verdict.reason)


def test_same_seed_same_verdict(protected, suspects):
    name, out = protected
    spec = METHODS[name]
    opened = spec.open(out)
    setting = spec.access[-1]
    # Both rules: the paper's test always measures the evidence (the null-panel rule may decline to, e.g. a
    # trigger watermark whose tiny victim never learned its trigger), so every method's evidence path runs.
    first = spec.verify_rules(opened, local_access(suspects["independent"], setting), setting=setting, seed=3)
    second = spec.verify_rules(spec.open(out), local_access(suspects["independent"], setting), setting=setting, seed=3)
    for rule, verdict in first.items():
        again = second[rule]
        assert (verdict.outcome, verdict.p_value, verdict.statistic) == (again.outcome, again.p_value, again.statistic)
        assert verdict.evidence.get("rows") == again.evidence.get("rows"), rule
    assert first["paper"].evidence["rows"]


def test_a_label_only_api_is_refused_by_methods_that_need_more(protected):
    name, out = protected
    spec = METHODS[name]
    opened = spec.open(out)
    labels = LabelOnlyAccess(lambda x: torch.zeros(len(x), dtype=torch.long), num_classes=4, input_shape=(1, 28, 28))
    needs = [spec.needs.get(s, s) for s in spec.access]
    if LABEL_ONLY in needs:
        verdict = spec.verify(opened, labels, seed=0)
        assert verdict.outcome == INCONCLUSIVE  # constant labels: not a competent model
    else:
        from modelprove.core.errors import SuspectError

        with pytest.raises(SuspectError, match="needs"):
            spec.verify(opened, labels, seed=0)
