"""CAE fingerprinting and the IPGuard baseline: hand-computed pieces, then both end to end on the bars task."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from modelprove.access import BlackBoxAccess, LabelOnlyAccess
from modelprove.access.levels import QueryBudgetError
from modelprove.adversary.query_detector import DetectorConfig, train_query_detector
from modelprove.core.errors import ModelproveError, ProtectionError
from modelprove.methods import METHODS, cae, ipguard
from modelprove.methods.common import fresh_model
from modelprove.methods.panel import PanelConfig
from modelprove.stats import roc_auc
from modelprove.models import predict_labels
from modelprove.training import TrainConfig, train


class Lookup(nn.Module):
    """A toy classifier: image i (its first pixel holds i/100) gets the label table[i], as one-hot logits."""

    def __init__(self, table: list[int], classes: int = 2):
        super().__init__()
        self.register_buffer("table", torch.tensor(table))
        self.classes = classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (x[:, 0, 0, 0] * 100).round().long()
        return 10 * nn.functional.one_hot(self.table[index], self.classes).float() + 0 * self.dummy


def indexed_images(count: int) -> torch.Tensor:
    x = torch.zeros(count, 1, 4, 4)
    x[:, 0, 0, 0] = torch.arange(count) / 100
    return x


def test_transfer_and_conferrability_match_a_hand_count():
    surrogates = [Lookup([0, 1, 0]), Lookup([0, 1, 1]), Lookup([0, 0, 1])]
    references = [Lookup([1, 1, 0]), Lookup([0, 1, 0])]
    images, targets = indexed_images(3), torch.tensor([0, 1, 1])
    # Transfer(S) = [3/3, 2/3, 2/3], Transfer(R) = [1/2, 2/2, 0/2]
    assert torch.allclose(cae.transfer(surrogates, images, targets), torch.tensor([1.0, 2 / 3, 2 / 3]))
    assert torch.allclose(cae.transfer(references, images, targets), torch.tensor([0.5, 1.0, 0.0]))
    confer = cae.conferrability(surrogates, references, images, targets)
    assert torch.allclose(confer, torch.tensor([0.5, 0.0, 2 / 3]))


def test_ensemble_output_and_cem_loss_match_a_hand_computation():
    s_probs = torch.tensor([[[0.8, 0.2]], [[0.6, 0.4]]])  # (members, N=1, K=2)
    r_probs = torch.tensor([[[0.4, 0.6]], [[0.2, 0.8]]])
    ensemble, s_bar, r_bar = cae.ensemble_output(s_probs, r_probs)
    assert torch.allclose(s_bar, torch.tensor([[0.7, 0.3]])) and torch.allclose(r_bar, torch.tensor([[0.3, 0.7]]))
    # S̄·(1 − R̄) = [0.49, 0.09]; softmax: e^0.49 / (e^0.49 + e^0.09)
    top = math.exp(0.49) / (math.exp(0.49) + math.exp(0.09))
    assert ensemble[0, 0].item() == pytest.approx(top, abs=1e-6)
    source_adv, clean_label = torch.tensor([[0.5, 0.5]]), torch.tensor([0])
    # the conferrability term takes the best class other than y0 = 0: E(x')_1 = 1 − top
    confer_term = -math.log(1 - top)
    away = -math.log(0.5)  # H(one-hot y0, M(x')) = −log M(x')_0
    agree = -(0.5 * math.log(0.7) + 0.5 * math.log(0.3))
    loss = cae.cem_loss(ensemble, s_bar, source_adv, clean_label)
    assert loss.item() == pytest.approx(confer_term - away + agree, abs=1e-5)
    weighted = cae.cem_loss(ensemble, s_bar, source_adv, clean_label, (1.0, 0.1, 0.1))
    assert weighted.item() == pytest.approx(confer_term - 0.1 * away + 0.1 * agree, abs=1e-5)
    # member dropout: only the first surrogate and the second reference kept
    ensemble, s_bar, r_bar = cae.ensemble_output(s_probs, r_probs, torch.tensor([True, False]), torch.tensor([False, True]))
    assert torch.allclose(s_bar, torch.tensor([[0.8, 0.2]])) and torch.allclose(r_bar, torch.tensor([[0.2, 0.8]]))
    with pytest.raises(ModelproveError, match="kept no member"):
        cae.ensemble_output(s_probs, r_probs, torch.tensor([False, False]))


def test_the_second_term_pushes_the_source_off_its_label_from_the_start():
    """H(y0, M(x')) against y0's one-hot has a gradient at x' = x0 (its soft-target form, H(M(x0), M(x')),
    has exactly none there: softmax(z) − softmax(z) = 0), and descending −λ2·H lowers M's probability of y0."""
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], requires_grad=True)
    clean = logits.detach().argmax(dim=1)
    ensemble = torch.full((2, 3), 1 / 3)
    loss = cae.cem_loss(ensemble, ensemble, logits.softmax(dim=1), clean, (0.0, 1.0, 0.0))
    (gradient,) = torch.autograd.grad(loss, logits)
    assert gradient.abs().max() > 0.05  # the old soft target: 8e-8 (issue 16)
    step = logits.detach() - 2.0 * gradient
    before = logits.detach().softmax(dim=1).gather(1, clean.view(-1, 1))
    after = step.softmax(dim=1).gather(1, clean.view(-1, 1))
    assert (after < before - 0.01).all()


def test_the_conferrability_term_ignores_the_clean_label():
    """The best class other than y0: an ensemble that finds y0 itself most conferrable gives the loss of
    the runner-up, so CEM cannot satisfy it by keeping M's label."""
    ensemble = torch.tensor([[0.7, 0.2, 0.1]])
    uniform = torch.full((1, 3), 1 / 3)
    loss = cae.cem_loss(ensemble, uniform, uniform, torch.tensor([0]), (1.0, 0.0, 0.0))
    assert loss.item() == pytest.approx(-math.log(0.2), abs=1e-6)
    loss = cae.cem_loss(ensemble, uniform, uniform, torch.tensor([2]), (1.0, 0.0, 0.0))
    assert loss.item() == pytest.approx(-math.log(0.7), abs=1e-6)


def test_cem_moves_most_examples_off_the_sources_label(single_thread):
    """A linear source and surrogates close to it, references unlike it: CEM's examples get another label
    from the source for most images, and the surrogates follow the source more often than the references."""
    torch.manual_seed(3)
    source = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    def near() -> nn.Module:
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        model.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in source.state_dict().items()})
        return model

    surrogates = [near() for _ in range(3)]
    references = [nn.Sequential(nn.Flatten(), nn.Linear(16, 3)) for _ in range(3)]
    x0 = torch.rand(60, 1, 4, 4)
    config = cae.CaeConfig(eps=0.5, steps=40, step_size=0.05, candidates=60, n=5, surrogates=3, references=3)
    x = cae.conferrable_examples(source, surrogates, references, x0, config)
    labels, clean = source(x).argmax(dim=1), source(x0).argmax(dim=1)
    flipped = labels != clean
    assert flipped.float().mean() > 0.6
    to_s = cae.transfer(surrogates, x[flipped], labels[flipped]).mean()
    to_r = cae.transfer(references, x[flipped], labels[flipped]).mean()
    assert to_s > to_r + 0.2


def test_clip_to_ball_by_hand():
    x0 = torch.tensor([0.0, 0.5, 0.98, 0.3])
    x = torch.tensor([-0.2, 0.7, 1.2, 0.31])
    assert torch.allclose(cae.clip_to_ball(x, x0, 0.05), torch.tensor([0.0, 0.55, 1.0, 0.31]))


def test_cem_stays_in_the_eps_ball_and_moves(single_thread):
    torch.manual_seed(0)

    def net():
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))

    source, surrogates, references = net(), [net(), net()], [net(), net()]
    x0 = torch.rand(20, 1, 4, 4)
    config = cae.CaeConfig(eps=0.03, steps=20, step_size=0.01, candidates=20, n=5)
    x = cae.conferrable_examples(source, surrogates, references, x0, config)
    assert (x - x0).abs().max() <= 0.03 + 1e-6
    assert x.min() >= 0 and x.max() <= 1
    assert (x - x0).abs().max() > 0.02  # it did optimise (Adam's steps of 0.01 reach the ball's edge)
    assert all(p.requires_grad for p in source.parameters())  # the weights were only frozen for CEM
    again = cae.conferrable_examples(source, surrogates, references, x0, config)
    assert torch.equal(x, again)  # seeded member dropout: reproducible


def test_comparison_attacks_stay_in_the_ball(single_thread):
    torch.manual_seed(1)
    source = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x0 = torch.rand(10, 1, 4, 4) * 0.8 + 0.1
    for attack in cae.COMPARISON_ATTACKS:
        x = cae.comparison_examples(attack, source, x0, 0.05, steps=4)
        assert (x - x0).abs().max() <= 0.05 + 1e-6, attack
    fgm = cae.comparison_examples("fgm", source, x0, 0.05)
    assert torch.allclose((fgm - x0).abs(), torch.full_like(x0, 0.05), atol=1e-6)  # one full signed step
    with pytest.raises(ModelproveError, match="unknown comparison attack"):
        cae.comparison_examples("deepfool", source, x0, 0.05)


def test_balanced_selection_by_hand():
    targets = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.95, 0.4, 0.3, 0.2])
    eligible = torch.ones(9, dtype=torch.bool)
    # quota 2 per class: class 2 has one example; its place goes to the best leftover (0.7, class 0)
    assert cae.balanced_selection(scores, targets, eligible, 6, 3).tolist() == [0, 1, 2, 5, 6, 8]
    # ineligible examples never enter
    eligible[0] = False
    assert 0 not in cae.balanced_selection(scores, targets, eligible, 6, 3).tolist()
    # plenty of each class: exact balance, and n not divisible by K: counts differ by at most one
    targets = torch.arange(30) % 3
    scores = torch.rand(30, generator=torch.Generator().manual_seed(0))
    chosen = cae.balanced_selection(scores, targets, torch.ones(30, dtype=torch.bool), 9, 3)
    assert torch.bincount(targets[chosen]).tolist() == [3, 3, 3]
    chosen = cae.balanced_selection(scores, targets, torch.ones(30, dtype=torch.bool), 7, 3)
    counts = torch.bincount(targets[chosen], minlength=3)
    assert len(chosen) == 7 and counts.max() - counts.min() <= 1
    # within a class the best scores are kept
    for k in range(3):
        kept = scores[chosen][targets[chosen] == k]
        assert kept.min() >= scores[targets == k].sort(descending=True).values[len(kept) - 1] - 1e-9


def test_conferrability_spread_by_hand():
    values = torch.tensor([0.1, 0.9, 0.3, 0.5, 0.7])
    spread = cae.conferrability_spread(values, 3)
    assert spread["threshold_for_n"] == pytest.approx(0.5)  # the third largest admits exactly 3
    assert spread["conferrability_fooled_quantiles"]["0.5"] == pytest.approx(0.5)
    assert spread["conferrability_fooled_quantiles"]["max"] == pytest.approx(0.9)
    assert cae.conferrability_spread(values, 6)["threshold_for_n"] is None  # fewer than n changed the label
    assert cae.conferrability_spread(torch.tensor([]), 3) == {"conferrability_fooled_quantiles": None,
                                                                "threshold_for_n": None}


def test_threshold_choice_by_hand():
    assert cae.choose_threshold([0.8, 0.9], [0.1, 0.3], 0.75) == pytest.approx(0.55)
    # overlap: candidates 0.35 and 0.75 both reach TPR − FPR = 0.5; the higher one is taken
    assert cae.choose_threshold([0.5, 0.9], [0.6, 0.2], 0.75) == pytest.approx(0.75)
    assert cae.choose_threshold([], [0.1], 0.75) == 0.75
    assert cae.choose_threshold([0.9], [], 0.6) == 0.6
    assert cae.references_rate([0.1, 0.2], 10, 10) == pytest.approx(4 / 22)  # (1 + 2 + 1) / (20 + 2)
    assert cae.references_rate([], 10, 10) == pytest.approx(0.1)


# -- end to end on the bars task ------------------------------------------------------------------

SMALL = dict(surrogate_archs="lenet5", reference_archs="lenet5", surrogates=2, references=2, held_out_surrogates=1,
             held_out_references=1, epochs=6)


@pytest.fixture(scope="module")
def protections(tmp_path_factory, bars_task, tiny_panel, single_thread):
    defender, _, test = bars_task
    torch.manual_seed(5)
    source = fresh_model("lenet5", defender, 5)
    train(source, defender, TrainConfig(epochs=8, seed=5), show_progress=False)
    root = tmp_path_factory.mktemp("cae")
    config = cae.CaeConfig(**SMALL, steps=30, step_size=0.02, eps=0.25, candidates=60, max_candidates=120, n=20)
    made = cae.protect(defender, test, root / "cae", config, model=source, panel=tiny_panel)
    ip_config = ipguard.IpguardConfig(**{k: v for k, v in SMALL.items() if k not in ("surrogates", "references")},
                                      n=20, steps=40)
    ip_made = ipguard.protect(defender, test, root / "ipguard", ip_config, model=source, defender_models=made.models,
                              panel=tiny_panel)
    return root, source, made, ip_made


def test_protection_is_complete_and_balanced(protections, bars_task):
    root, source, made, _ = protections
    manifest = json.loads((root / "cae" / "manifest.json").read_text())
    assert manifest["method"] == "cae"
    assert {"source.safetensors", "source.json", "fingerprint.safetensors"} <= set(manifest["files"])
    results = manifest["results"]
    assert results["fingerprint_size"] == len(made.targets) == min(20, results["qualified"]) > 0
    assert results["short_of_n"] == 20 - results["fingerprint_size"]
    counts = results["target_class_counts"]
    assert counts == torch.bincount(made.targets, minlength=4).tolist()
    # balanced as far as CEM's qualified examples reach each class: quota ceil(20 / 4) = 5 per class
    assert sum(counts) == len(made.targets)
    assert all(c >= min(5, f) for c, f in zip(counts, results["qualified_class_counts"]))
    assert results["rho_source"] == "held-out models"
    assert len(results["held_out_surrogate_caeacc"]) == 1 and len(results["held_out_reference_caeacc"]) == 1
    opened = cae.open_protection(root / "cae")
    assert torch.equal(opened.images, made.fingerprint) and torch.equal(opened.targets, made.targets)
    assert opened.rho == pytest.approx(results["rho"])
    assert (made.fingerprint >= 0).all() and (made.fingerprint <= 1).all()


def test_only_examples_above_the_threshold_that_flip_the_source_enter(protections, bars_task):
    """Sec. 4: the fingerprint keeps CEM's examples whose conferrability on the defender's models reaches the
    threshold, and each changed the source's label (its target is the source's new label)."""
    root, source, made, _ = protections
    defender, _, _ = bars_task
    stored = cae.load_file(str(root / "cae" / "fingerprint.safetensors"))
    threshold = json.loads((root / "cae" / "manifest.json").read_text())["config"]["threshold"]
    assert (stored["conferrability"] >= threshold).all()
    recomputed = cae.conferrability(made.models.surrogates, made.models.references, made.fingerprint, made.targets)
    assert torch.allclose(recomputed, stored["conferrability"])
    assert torch.equal(predict_labels(source, made.fingerprint), made.targets)
    rows = torch.nonzero(torch.isin(defender.indices, stored["origins"])).flatten()
    clean = dict(zip(defender.indices[rows].tolist(), predict_labels(source, defender.as_float(rows)).tolist()))
    assert all(clean[int(o)] != int(t) for o, t in zip(stored["origins"], made.targets))


class AlwaysZero(nn.Module):
    """A reference that answers class 0 for every image (so no example targeted at 0 is conferrable)."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor([5.0] + [0.0] * (classes - 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1) + 0 * x.flatten(1).sum(dim=1, keepdim=True)


def test_candidates_are_drawn_in_rounds_until_n_or_the_cap(bars_task, single_thread, tmp_path):
    """Rounds of ``candidates`` images until every class has its share of qualified examples or
    ``max_candidates`` were tried; a threshold nothing reaches makes no fingerprint, and says why."""
    defender, _, test = bars_task
    source = fresh_model("lenet5", defender, 6)
    train(source, defender, TrainConfig(epochs=4, seed=6), show_progress=False)
    # class 0 can never reach the threshold against this reference: the rounds run to the cap
    models = cae.DefenderModels([source], [AlwaysZero()])
    config = cae.CaeConfig(**SMALL, steps=5, eps=0.25, candidates=20, max_candidates=60, n=8, threshold=0.5)
    found, rounds = cae.fingerprint_candidates(source, models, defender, config, 4)
    assert len(found.rows) == 60 and rounds == 3 and len(set(found.rows.tolist())) == 60
    assert not (found.qualified(0.5) & (found.targets == 0)).any()
    # references identical to the source: no example is conferrable at all
    with pytest.raises(ModelproveError, match="no CEM example reached conferrability"):
        cae.build(defender, test, tmp_path / "cae", cae.CaeConfig(**SMALL, steps=2, eps=0.25, candidates=20,
                                                                  max_candidates=20, n=5),
                  model=source, defender_models=cae.DefenderModels([source] * 2, [source] * 2, [source], [source]))


@pytest.mark.slow
def test_false_claims_fail_both_ways(protections, bars_task, tiny_panel, single_thread):
    """An honest stranger's independent model does not match the victim's fingerprint, and a fingerprint the
    stranger makes of that model, on their own data with the same settings, does not match the victim."""
    root, source, made, _ = protections
    defender, attacker, test = bars_task
    stranger = fresh_model("lenet5", attacker, 11)
    train(stranger, attacker, TrainConfig(epochs=8, seed=11), show_progress=False)
    config = cae.CaeConfig(**SMALL, steps=30, step_size=0.02, eps=0.25, candidates=60, max_candidates=120, n=20)
    # the stranger's own null panel (of the stranger's data), lenet5 only: the victim is a lenet5
    panel = PanelConfig(size=4, architectures="lenet5", epochs=2, store=tiny_panel.store)
    cae.protect(attacker, test, root / "stranger", config, model=stranger, panel=panel)
    for rule in ("panel", "paper"):
        assert cae.verify(root / "cae", stranger, rule=rule).outcome != "stolen"
        assert cae.verify(root / "stranger", source, rule=rule).outcome != "stolen"
    assert cae.verify(root / "stranger", stranger, rule="paper").statistic == 1.0  # its own fingerprint


def test_source_scores_one_and_is_flagged(protections):
    root, source, made, _ = protections
    verdict = cae.verify(root / "cae", source, suspect_name="source", rule="paper")
    n = len(made.targets)
    assert verdict.statistic == 1.0 and verdict.statistic_name == "CAEAcc"
    assert verdict.queries == n + verdict.competence["images"]  # the fingerprint once, and the competence check
    share = float(torch.bincount(made.targets).max()) / n
    assert verdict.details["largest_class_share"] == pytest.approx(share)
    # the chance rate, capped below 1 so that n of n is never p = 1 (one-class fingerprints reach it)
    rate = min(max(verdict.details["references_rate"], share), 1 - 0.5 / n)
    assert verdict.p_value == pytest.approx(rate ** n, rel=1e-6)  # P(X >= n) = r^n for n of n
    assert verdict.stolen == (1.0 > verdict.details["rho"] and verdict.p_value < 0.01)
    # A fingerprint CEM could not spread over the classes proves little (one class: p 0.6 for n of n,
    # measured with another seed); one whose largest class is at most half of it flags the source.
    if share <= 0.5 and verdict.details["references_rate"] <= 0.5:
        assert verdict.stolen and verdict.p_value <= 0.5 ** n * (1 + 1e-6)


def test_constant_label_suspect(protections):
    root, _, made, _ = protections
    for label in range(4):
        suspect = LabelOnlyAccess(lambda x, c=label: torch.full((len(x),), c), num_classes=4,
                                  input_shape=(1, 28, 28), name=f"constant-{label}")
        for rule in ("panel", "paper"):  # one constant label is not a competent model: never judged
            verdict = cae.verify(root / "cae", suspect, rule=rule)
            assert verdict.outcome == "inconclusive" and "competent" in verdict.reason
        # the paper's test alone, on the fingerprint: at most the largest class share, which is its chance
        verdict = cae.verify(root / "cae", suspect, rule="paper", competence=0)
        expected = float((made.targets == label).float().mean())
        assert verdict.statistic == pytest.approx(expected)
        assert not verdict.stolen and verdict.p_value > 0.4


def test_label_only_access_suffices_and_queries_are_counted(protections):
    root, source, made, _ = protections
    n = len(made.targets)
    clean = json.loads((root / "cae" / "manifest.json").read_text())["calibration"]["competence"]["images"]
    label_only = BlackBoxAccess.from_model(source, name="api", budget=n + clean).as_label_only()
    verdict = cae.verify(root / "cae", label_only)
    assert verdict.queries == n + clean and label_only.queries == n + clean and verdict.statistic == 1.0
    with pytest.raises(QueryBudgetError):
        cae.verify(root / "cae", BlackBoxAccess.from_model(source, budget=n + clean - 1).as_label_only())
    # rho and alpha can be changed at verification, nothing else
    strict = cae.verify(root / "cae", source, rho=0.5, alpha=1e-30, rule="paper")
    assert strict.details["threshold"] == 0.5 and strict.alpha == 1e-30
    assert strict.p_value > 1e-30 and not strict.stolen  # 20 matches cannot reach p < 1e-30 at this rate
    with pytest.raises(ModelproveError, match="no option eps"):
        cae.verify(root / "cae", source, eps=0.1)


def test_registry_and_wrong_method(protections):
    root, *_ = protections
    assert METHODS["cae"].inputs == ("model",) and METHODS["ipguard"].inputs == ("model",)
    assert METHODS["cae"].access == ("label-only",)
    with pytest.raises(ProtectionError, match="'ipguard', not 'cae'"):
        cae.open_protection(root / "ipguard")
    with pytest.raises(ModelproveError, match="source model"):
        cae.protect(None, None, root / "nothing", model=None)  # type: ignore[arg-type]


def test_ipguard_boundary_points_and_verification(protections, bars_task):
    root, source, made, ip_made = protections
    results = json.loads((root / "ipguard" / "manifest.json").read_text())["results"]
    assert results["fingerprint_size"] == len(ip_made.targets) > 0
    # the boundary points sit near the source's boundary: the top two logits are within the margin k
    logits = source.eval()(ip_made.fingerprint).detach()
    top2 = logits.topk(2, dim=1).values
    assert ((top2[:, 0] - top2[:, 1]) < 0.5 + 0.3).float().mean() > 0.8
    verdict = ipguard.verify(root / "ipguard", source)
    assert verdict.statistic == 1.0 and verdict.statistic_name == "matching rate"
    assert verdict.queries == len(ip_made.targets) + verdict.competence["images"]
    # the held-out models are CAE's: IPGuard trained none of its own
    assert ip_made.models.held_out_references[0] is made.models.held_out_references[0]


def test_boundary_loss_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.5], [0.0, 3.0, 1.0]])
    winner, runner_up = torch.tensor([0, 0]), torch.tensor([1, 1])
    # row 0: ReLU(1 − 2 + 0.5) + ReLU(0.5 − 1) = 0; row 1: ReLU(3 − 0 + 0.5) + ReLU(1 − 3) = 3.5
    assert ipguard.boundary_loss(logits, winner, runner_up, 0.5).tolist() == pytest.approx([0.0, 3.5])


def test_query_detector_separates_marked_queries(single_thread):
    g = torch.Generator().manual_seed(0)
    benign = torch.rand(120, 1, 16, 16, generator=g) * 0.5
    marked = torch.rand(120, 1, 16, 16, generator=g) * 0.5
    marked[:, :, 2:5, 2:5] = 1.0  # a visible perturbation
    detector, auc = train_query_detector(benign, marked, DetectorConfig(epochs=4, lr=0.05))
    assert auc > 0.95
    # scored on other sets: the same mark is caught, unmarked images are not told apart
    eval_benign = torch.rand(40, 1, 16, 16, generator=g) * 0.5
    eval_clean = torch.rand(40, 1, 16, 16, generator=g) * 0.5
    _, same = train_query_detector(benign, marked, DetectorConfig(epochs=4, lr=0.05),
                                   eval_benign=eval_benign, eval_adversarial=eval_clean)
    assert same < 0.8
    with pytest.raises(ModelproveError, match="both"):
        train_query_detector(benign, marked, eval_benign=eval_benign)
    assert roc_auc([1.0], [0.0]) == 1.0


def test_cli_verifies_a_model_file_label_only(protections, tmp_path):
    from modelprove.cli.main import run_verify
    from modelprove.models import card_for, save_model

    root, source, made, _ = protections
    path = save_model(source, card_for(source, [f"bar{k}" for k in range(4)]), tmp_path / "suspect.safetensors")
    verdict = run_verify(root / "cae", path, access="label-only", options=["rho=0.5"], rule="paper")
    assert verdict.method == "cae" and verdict.setting == "label-only" and verdict.statistic == 1.0
    assert verdict.details["threshold"] == 0.5 and verdict.queries == len(made.targets) + verdict.competence["images"]
    assert verdict.details["suspect_access"] == "label-only"
