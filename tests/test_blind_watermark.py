"""Blind watermark and its key-sample baselines on the tiny bars task (no Fashion-MNIST needed)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from scipy import stats

from modelprove.access import BlackBoxAccess, LabelOnlyAccess
from modelprove.adversary.key_detector import DenseDetector, detection_auc, detector_data, train_detector
from modelprove.core.config import config_from_pairs
from modelprove.core.errors import ModelproveError, ProtectionError
from modelprove.core.fileio import sha256_file
from modelprove.methods import METHODS, blind_watermark as bw, key_watermarks as kw
from modelprove.methods.key_samples import key_accuracy, load_key_set
from modelprove.models import build_model, load_model
from modelprove.training import TrainConfig, train


# -- SSIM -----------------------------------------------------------------------------------------


def test_ssim_of_constant_images_matches_the_formula_by_hand(single_thread):
    # Constant images: no variance, so SSIM = (2ab + C1) / (a² + b² + C1) with C1 = (0.01·1)².
    a, b = 0.3, 0.5
    x, y = (torch.full((1, 1, 16, 16), v, dtype=torch.float64) for v in (a, b))
    c1 = 1e-4
    expected = (2 * a * b + c1) / (a * a + b * b + c1)  # = 0.882388
    assert bw.ssim(x, y).item() == pytest.approx(expected, rel=1e-9)
    # float32, as in training: E[x²] − mu² leaves ~1e-8 of rounding against C2 = 9e-4
    assert bw.ssim(x.float(), y.float()).item() == pytest.approx(expected, rel=1e-4)
    assert bw.ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)


def test_ssim_of_an_image_and_its_negative_by_hand(single_thread):
    # y = 1 - x: mu_y = 1 - mu_x, var_y = var_x, cov = -var_x, computed here window by window on a
    # 11x11 image (one window position) with the Gaussian weights.
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 11, 11, generator=g, dtype=torch.float64)
    y = 1 - x
    w = bw.gaussian_window()
    mu_x = (w * x[0, 0]).sum()
    mu_y = 1 - mu_x
    var = (w * x[0, 0] ** 2).sum() - mu_x**2
    c1, c2 = 1e-4, 9e-4
    expected = ((2 * mu_x * mu_y + c1) * (-2 * var + c2)) / ((mu_x**2 + mu_y**2 + c1) * (2 * var + c2))
    assert bw.ssim(x, y).item() == pytest.approx(expected.item(), rel=1e-9)


def test_ssim_matches_skimage(single_thread):
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 28, 28, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ours = bw.ssim(x, y)
    for i in range(2):
        reference = structural_similarity(x[i].numpy(), y[i].numpy(), channel_axis=0, data_range=1.0,
                                          gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(reference, abs=1e-9)


# -- the blind watermark end to end ----------------------------------------------------------------

# 20 key samples (2.5% of 800), each in every host step: enough for lenet5 to learn them in 8 epochs.
# lr 0.05 on a cosine schedule with crops: this LeNet-5 (no BatchNorm) on the bars task at the paper's 0.1 risks
# diverging (see the unwatermarked model below).
CONFIG = bw.BlindWatermarkConfig(arch="lenet5", epochs=8, key_fraction=0.025, key_batch=20, clean_batch=50, seed=0,
                                 host_lr=0.05, host_schedule="cosine", augmentation="crop")


@pytest.fixture(scope="module")
def protection(tmp_path_factory, bars_task, tiny_panel, single_thread):
    defender, _, test = bars_task
    out = tmp_path_factory.mktemp("blind") / "protection"
    made = bw.protect(defender, test, out, CONFIG, panel=tiny_panel)
    return out, made


@pytest.fixture(scope="module")
def unwatermarked(bars_task, single_thread):
    defender = bars_task[0]
    torch.manual_seed(5)
    model = build_model("lenet5", 1, defender.num_classes, (28, 28))
    # lr 0.02: at the trainer's 0.05 this LeNet-5 (no BatchNorm) can diverge and end at chance (measured
    # accuracy 0.255), which the competence check rightly refuses to judge
    train(model, defender, TrainConfig(epochs=6, batch_size=50, seed=5, lr=0.02), show_progress=False)
    return model


def test_key_samples_have_the_shape_range_and_labels_of_the_task(protection, bars_task):
    out, made = protection
    defender = bars_task[0]
    keys = load_key_set(bw.open_protection(out).protection)
    assert keys.images.shape == (20, 1, 28, 28) and keys.images.dtype == torch.uint8  # 2.5% of 800
    assert keys.targets.dtype == torch.int64 and keys.targets.min() >= 0 and keys.targets.max() < defender.num_classes
    assert len(keys.targets.unique()) > 1  # random target labels, not one class
    # Stored and reloaded exactly, targets included; originals are the defender images at those rows.
    assert torch.equal(keys.images, made.keys.images) and torch.equal(keys.targets, made.keys.targets)
    assert torch.equal(keys.originals, defender.images[torch.isin(defender.indices, keys.indices)])
    # Key samples are close to their originals but not equal to them (Sec. 4.3).
    difference = (keys.as_float() - keys.originals.float() / 255).abs().mean().item()
    assert 0 < difference < 0.15
    assert made.results["key_ssim"] > 0.5
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"host.safetensors", "keys.safetensors", "encoder.safetensors", "logo.png"} <= set(manifest["files"])
    assert manifest["config"]["alpha"] == 3.0 and manifest["config"]["delta"] == 0.01  # the paper's weights


def test_discriminator_ends_near_chance_on_key_samples_of_held_out_images(protection, bars_task):
    """Sec. 4.3: e and d trained together until d cannot tell key samples from ordinary images. Before training,
    key samples are told apart at once (the untrained encoder's are grey blurs: ROC AUC near 1 even for an
    untrained d); after it, d is near chance on key samples made from test images it never saw."""
    _, made = protection
    held_out = made.results["discriminator_held_out"]
    assert held_out["images"] == 400 and 0.3 < held_out["auc"] < 0.7 and held_out["accuracy"] < 0.7
    torch.manual_seed(0)
    untrained = bw.discriminator_scores(bw.Encoder(1, 8), bw.Discriminator(1), made.logo, bars_task[2].images)
    assert untrained["auc"] > 0.9 or untrained["auc"] < 0.1  # separable, whichever side d's random logit favours


def test_key_accuracy_of_an_unwatermarked_model_is_near_chance(protection, unwatermarked, bars_task):
    """t_key is drawn at random, independently of the image: a model that never saw key samples gives it to
    about 1/K of them (here 400 key samples made by the owner's encoder from test images, K = 4)."""
    from modelprove.methods.key_samples import KeySet

    _, made = protection
    images = bars_task[2].as_float()
    targets = torch.randint(0, 4, (len(images),), generator=torch.Generator().manual_seed(3))
    keys = KeySet(bw.make_key_samples(made.encoder, made.logo, images), targets)
    assert 0.17 < key_accuracy(unwatermarked, keys) < 0.33  # 1/K = 0.25; binomial sd over 400 keys 0.022


def test_default_logo_is_the_owners_name_rendered(bars_task):
    logo = bw.render_logo("Alice", (1, 28, 28))
    assert logo.shape == (1, 28, 28) and 0 <= logo.min() and logo.max() <= 1
    assert logo.max() > 0.5 and (logo > 0.5).float().mean() < 0.5  # white text on black
    assert not torch.equal(logo, bw.render_logo("Bob", (1, 28, 28)))


def test_logo_file_is_read_and_resized(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((50, 40, 3), 200, dtype=np.uint8)).save(tmp_path / "logo.png")
    logo = bw.load_logo(tmp_path / "logo.png", (1, 28, 28))
    assert logo.shape == (1, 28, 28) and logo.mean().item() == pytest.approx(200 / 255, abs=1e-3)
    with pytest.raises(ModelproveError, match="logo file not found"):
        bw.load_logo(tmp_path / "missing.png", (1, 28, 28))


def test_host_is_flagged_and_unwatermarked_model_is_cleared(protection, unwatermarked):
    out, made = protection
    host, _ = load_model(out / "host.safetensors")
    opened = bw.open_protection(out)
    stolen = bw.verify(opened, host, suspect_name="host")
    assert stolen.stolen and stolen.statistic_name == "key accuracy" and stolen.statistic > 0.8 and stolen.p_value < 0.01
    paper = bw.verify(opened, host, suspect_name="host", rule="paper")
    assert paper.stolen and paper.effect > 0.8 and paper.p_value < 1e-6  # T_acc, and the binomial p against 1/K
    for rule in ("panel", "paper"):
        cleared = bw.verify(opened, unwatermarked, suspect_name="independent", rule=rule)
        assert cleared.outcome == "not stolen" and cleared.statistic < 0.5, cleared.reason
    assert cleared.details["threshold"] == 0.5


def test_label_only_access_suffices_and_queries_are_counted(protection):
    out, _ = protection
    host, _ = load_model(out / "host.safetensors")
    access = BlackBoxAccess.from_model(host, name="api").as_label_only()
    verdict = bw.verify(out, access)
    # every key sample once, and the competence check's clean images
    assert verdict.stolen and verdict.setting == "label-only" and verdict.queries == 20 + verdict.competence["images"]


def test_key_accuracy_and_p_value_by_hand(protection):
    out, made = protection
    targets = made.keys.targets
    answers = targets.clone()
    answers[:7] = (targets[:7] + 1) % 4  # 13 of 20 right

    suspect = LabelOnlyAccess(lambda images: answers[: len(images)], num_classes=4, input_shape=(1, 28, 28))
    # the paper's rule on the key samples alone (the competence check is for real models; this suspect
    # answers only the key samples' labels)
    verdict = bw.verify(out, suspect, t_acc=0.6, rule="paper", competence=0)
    assert verdict.effect == pytest.approx(13 / 20) and verdict.statistic == pytest.approx(13 / 20)
    assert verdict.p_value == pytest.approx(stats.binom.sf(12, 20, 0.25), rel=1e-9)  # P(X >= 13), chance 1/K
    assert verdict.stolen  # 0.65 > 0.6
    assert not bw.verify(out, suspect, t_acc=0.7, rule="paper", competence=0).stolen


def test_protection_without_labels_is_refused(protection, tmp_path):
    out, _ = protection
    copy = tmp_path / "no-labels"
    shutil.copytree(out, copy)
    tensors = load_file(str(copy / "keys.safetensors"))
    del tensors["targets"]
    save_file(tensors, str(copy / "keys.safetensors"))
    # Re-hash so that only the missing labels, not tampering, is what is refused.
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["keys.safetensors"] = sha256_file(copy / "keys.safetensors")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ProtectionError, match="no 'targets'.*prove nothing"):
        bw.open_protection(copy)


def test_unknown_verify_option_is_refused(protection):
    out, _ = protection
    host, _ = load_model(out / "host.safetensors")
    with pytest.raises(ModelproveError, match="has no option m"):
        bw.verify(out, host, m=10)


def test_registry_and_cli_config(protection):
    spec = METHODS["blind-watermark"]
    assert spec.inputs == ("logo",) and spec.access == ("label-only",)
    config = config_from_pairs(spec.config, ["owner=Alice Smith", "epochs=3"])
    assert config.owner == "Alice Smith" and config.epochs == 3 and config.beta == 5.0
    for name, kind in (("adi", "adi"), ("zhang-content", "content"), ("zhang-noise", "noise"),
                       ("zhang-unrelated", "unrelated")):
        assert config_from_pairs(METHODS[name].config, []).kind == kind


# -- baselines ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["adi", "content", "noise", "unrelated"])
def test_baseline_keys_are_learned_by_their_host_only(kind, bars_task, tmp_path, unwatermarked, single_thread):
    defender, _, test = bars_task
    # one reference model (an MLP) chooses the unrelated keys' target here: the default six cost ~20 s more
    extra = {"reference_models": "mlp:sgd-none"} if kind == "unrelated" else {}
    config = kw.CONFIGS[kind](arch="lenet5", epochs=6, key_fraction=0.03, key_repeats=10, batch_size=50, **extra)
    made = kw.protect(defender, test, tmp_path / kind, config)
    keys = made.keys
    assert keys.images.shape == (24, 1, 28, 28) and keys.images.dtype == torch.uint8
    if kind != "adi":  # one target label; the unrelated keys' chosen by reference models (choose_target)
        target = made.results["target_choice"]["chosen"] if kind == "unrelated" else config.target_label
        assert (keys.targets == target).all()
    opened = METHODS[config.method].open(tmp_path / kind)
    assert torch.equal(opened.keys.targets, keys.targets)
    verdict = METHODS[config.method].verify(opened, BlackBoxAccess.from_model(made.host).as_label_only())
    assert verdict.method == config.method and verdict.stolen and verdict.effect > 0.8
    # the unrelated keys' target is one the reference models rarely gave digits, so an honest model rarely does
    assert key_accuracy(unwatermarked, keys) < 0.6


def test_content_and_noise_keys_stamp_their_pattern(bars_task):
    defender = bars_task[0]
    content = kw.make_key_samples(kw.ZhangContentConfig(), defender, 10, seed=0)
    assert (content.images >= content.originals).all()  # white text is a max over the image
    assert (content.images != content.originals).any()
    noise = kw.make_key_samples(kw.ZhangNoiseConfig(noise_std=0.3), defender, 10, seed=0)
    spread = (noise.images.float() - noise.originals.float()).std().item() / 255
    assert 0.15 < spread < 0.35  # about noise_std, less what clipping removes


# -- evasion detector -----------------------------------------------------------------------------


def test_dense_detector_spots_stamped_keys_and_not_random_labels(bars_task, single_thread):
    defender, attacker, test = bars_task
    config = kw.ZhangContentConfig()
    train_keys = kw.make_key_samples(config, attacker, 200, seed=1).images
    detector = train_detector(DenseDetector((1, 28, 28)), detector_data(attacker.images[:200], train_keys, "d"))
    held_out = kw.make_key_samples(config, test, 100, seed=2).images
    auc, _, _ = detection_auc(detector, test.images[200:300], held_out)
    assert auc > 0.95
    # A control that must fail: "keys" that are just other ordinary images cannot be told apart.
    control = train_detector(DenseDetector((1, 28, 28)), detector_data(attacker.images[:200], attacker.images[200:400], "c"))
    auc_control, _, _ = detection_auc(control, test.images[:100], test.images[100:200])
    assert 0.3 < auc_control < 0.7


# -- the benchmark's studies of a protection (bench.studies), on the protection above -----------------


def test_studies_measure_the_protection(protection, unwatermarked, bars_task, single_thread):
    from types import SimpleNamespace

    from modelprove.bench.runner import verify_cell
    from modelprove.bench.studies import STUDIES, StudyInput

    out, made = protection
    opened = bw.open_protection(out)
    host, _ = load_model(out / "host.safetensors")
    defender, attacker, test = bars_task
    splits = SimpleNamespace(defender=defender, attacker=attacker, test=test)
    # "another owner's protection": ours again, with the unwatermarked model as its host
    data = StudyInput(METHODS["blind-watermark"], opened, host, splits, 0, 0.01, benign=unwatermarked,
                      others=[(1, opened, unwatermarked)], verify=verify_cell)

    def run(name, **params):
        return STUDIES[name].measure(data, STUDIES[name].parameters(params))

    samples = run("key-samples", held_out=200, examples=2)
    assert samples["key_accuracy"] > 0.8 and samples["benign_key_accuracy"] < 0.6
    assert samples["psnr_db"] > 15 and 0.5 < samples["ssim"] <= 1 and len(samples["examples"]["keys"]) == 2
    assert 0.3 < samples["discriminator"]["auc"] < 0.7 and samples["embedding"]["key_exposures"] > 0
    detector = run("key-detector", detector_seeds=1, epochs=2, held_out=100, reference_features=True)
    assert [row["generator"] for row in detector["rows"]] == ["the owner's encoder",
                                                              "its own encoder (another seed's protection)"]
    assert all(0 <= auc <= 1 for row in detector["rows"] for auc in row["dense"] + row["feature"] + row["reference"])
    assert all(len(row["reference"]) == 1 for row in detector["rows"])  # the benign model's features, one seed
    forgery = run("key-forgery", images=100)
    assert forgery["real"] > 0.8 and forgery["host"] < 0.6  # transplanted differences do not carry the labels
    transfer = run("key-transfer")
    assert transfer["own"] > 0.8 and transfer["hosts"][0]["outcome"] == "not stolen"
