"""Studies: what a paper measures on a protection besides verifying suspects (a grid's ``[[studies]]``).

A study runs once per protection of the methods it applies to, after that protection (and, for a study
that compares seeds, the same method's protections of the grid's other seeds) is built. Its result is one
line of the run's ``results.jsonl``, keyed like a cell by a hash of everything that determines it, so a
rerun skips it and a killed run resumes, as cells do; ``bench.report`` renders each study with a function
of its own. The key-sample watermarks' studies (blind watermark, Li et al. ACSAC 2019, Sec. 6):

- ``key-samples``: what the host learned (key accuracy on the key samples and on the images they were made
  from), how far key samples are from those images (PSNR, SSIM), and the blind watermark's embedding: the
  discriminator's accuracy on key samples made from held-out images (near 0.5 when the encoder and the
  discriminator have converged), its steps and each key sample's exposure;
- ``key-detector``: the thief's evasion detectors (Sec. 6.3; ROC AUC on the real key samples);
- ``key-forgery``: forged key samples on the watermarked model and on the benign model (Sec. 6.4 (a));
- ``key-transfer``: another owner's watermarked model (the grid's other seeds) verified against this
  protection, and the key accuracy matrix (Sec. 6.4 (b), Fig. 9).

And the trigger watermarks' (BadNets, gradient matching; MOVE TPAMI Sec. 6.1 baselines):

- ``trigger-learning``: whether the victim learned the trigger at all (its trigger success beside the
  surrogate's and the seed's benign model's, the crafting record), and for gradient matching the control
  that separates crafting from budget (Witches' Brew Sec. 5 asks the same): victims trained from scratch
  with the trigger itself stamped at amplitude ``controls`` (levels of 255) on the protection's own poison
  rows, labels kept; if even the plain trigger at the budget is not learned, no crafting within it will be.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from modelprove.core.errors import ModelproveError

STUDY_VERSION = 1  # bump when a study's code changes what it measures: its records are then redone


@dataclass(frozen=True)
class Study:
    name: str
    description: str
    defaults: dict[str, Any]  # its parameters (a grid's ``set``) and their defaults
    applies: Callable[[Any], bool]  # to a method (registry entry)
    measure: Callable[["StudyInput", dict[str, Any]], dict[str, Any]]
    other_seeds: bool = False  # needs the same method's protections of the grid's other seeds
    # Parameters added after records were made whose default reproduces what those records measured: at
    # the default they stay out of the record's key, so the records stay valid.
    later: tuple[str, ...] = ()

    def parameters(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(self.defaults))
        if unknown:
            raise ModelproveError(f"study {self.name!r} has no parameter {unknown[0]!r} (it has "
                                  f"{', '.join(sorted(self.defaults)) or 'none'}).")
        for name, value in given.items():
            default = self.defaults[name]
            if type(value) is not type(default) and not (isinstance(default, float) and isinstance(value, int)):
                raise ModelproveError(f"study {self.name!r} parameter {name!r} must be a {type(default).__name__}, "
                                      f"got {value!r}.")
            if isinstance(default, list) and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                     for v in value):
                raise ModelproveError(f"study {self.name!r} parameter {name!r} must be a list of numbers, got {value!r}.")
        return {**self.defaults, **given}


@dataclass
class StudyInput:
    """What a study measures: the protection (opened), its protected model, the grid's data and seed, the
    seed's benign model, and (for ``other_seeds`` studies) the same method's protections of other seeds."""

    spec: Any
    opened: Any
    victim: Any
    splits: Any
    seed: int
    alpha: float
    benign: Any = None
    others: list[tuple[int, Any, Any]] = field(default_factory=list)  # (seed, opened, victim)
    verify: Callable[..., dict[str, Any]] | None = None  # bench.runner.verify_cell


def _key_method(spec) -> bool:
    from modelprove.methods.key_samples import KeySampleMethod

    return isinstance(spec, KeySampleMethod)


def _psnr(keys: torch.Tensor, originals: torch.Tensor) -> float:
    mse = float(((keys - originals) ** 2).mean())
    return float("inf") if mse == 0 else 10 * float(np.log10(1 / mse))


def _skimage_ssim(keys: torch.Tensor, originals: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004) as skimage computes it (Gaussian window, sigma 1.5): an implementation
    apart from the one the encoder's loss uses."""
    from skimage.metrics import structural_similarity

    values = [structural_similarity(o.numpy(), k.numpy(), channel_axis=0, data_range=1.0, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False) for o, k in zip(originals, keys)]
    return float(np.mean(values))


def key_samples(data: StudyInput, params: dict[str, Any]) -> dict[str, Any]:
    from modelprove.methods.key_samples import KeySet, key_accuracy

    opened, host = data.opened, data.victim
    keys = opened.keys
    results = opened.protection.manifest.get("results", {})
    out: dict[str, Any] = {"keys": len(keys), "key_accuracy": key_accuracy(host, keys),
                           "targets": int(len(keys.targets.unique()))}
    if data.benign is not None:
        out["benign_key_accuracy"] = key_accuracy(data.benign, keys)
    if keys.originals is not None:
        k, o = keys.as_float(), keys.originals.float() / 255
        out.update(originals_on_targets=key_accuracy(host, KeySet(keys.originals, keys.targets)),
                   psnr_db=_psnr(k, o), ssim=_skimage_ssim(k, o),
                   mean_abs_levels=float((k - o).abs().mean() * 255), max_abs_levels=float((k - o).abs().max() * 255))
    shown = min(params["examples"], len(keys))  # a few key samples (and their images) for the report's figure
    out["examples"] = {"keys": keys.images[:shown].tolist(), "targets": keys.targets[:shown].tolist(),
                       **({"originals": keys.originals[:shown].tolist()} if keys.originals is not None else {})}
    calibration = opened.protection.manifest.get("calibration", {})
    for variant in calibration.get("variants", {}).values():
        out["panel"] = {arch: {"mean": r["panel_mean"], "sd": r["panel_sd"], "victim": r["statistic"]}
                        for arch, r in variant["self_test"].items()}
    if "target_choice" in results:  # Zhang unrelated: the reference models' shares of every class
        out["target_choice"] = results["target_choice"]
    if hasattr(opened.config, "key_repeats"):  # the baselines: every epoch sees each key key_repeats times
        out["key_exposures"] = opened.config.epochs * opened.config.key_repeats
    if opened.method == "blind-watermark":
        from modelprove.methods.blind_watermark import discriminator_accuracy

        held = data.splits.test.images[: params["held_out"]]
        out["discriminator"] = discriminator_accuracy(opened, held)
        embedding = results.get("embedding", {})
        out["embedding"] = {k: embedding.get(k) for k in ("steps", "seconds", "cpu_seconds", "key_exposures",
                                                           "encoder_updates")}
        out["embedding"]["history"] = embedding.get("history", [])
        out["key_exposures"] = embedding.get("key_exposures")
    return out


def key_detector(data: StudyInput, params: dict[str, Any]) -> dict[str, Any]:
    from modelprove.adversary.key_detector import DetectorConfig, evasion_aucs, thief_key_samples

    splits = data.splits
    count = max(100, round(params["thief_fraction"] * len(splits.defender)))
    order = torch.randperm(len(splits.attacker), generator=torch.Generator().manual_seed(data.seed + 7))
    if len(order) < 2 * count:
        raise ModelproveError(f"the key-detector study needs {2 * count} attacker images, the grid has {len(order)}.")
    thief_clean = splits.attacker.images[order[:count]]
    source = splits.attacker.subset(order[count:2 * count].sort().values, name="the thief's key sources")
    held_out = splits.test.images[: params["held_out"]]
    seeds = list(range(data.seed, data.seed + params["detector_seeds"]))
    config = DetectorConfig(epochs=params["epochs"], lr=params["lr"])
    generators = [("the method's", None)]
    if data.opened.method == "blind-watermark":
        generators = [("the owner's encoder", None)]
        generators += [("its own encoder (another seed's protection)", other.encoder()) for _, other, _ in data.others[:1]]
    reference = data.benign if params["reference_features"] else None
    rows = []
    for what, encoder in generators:
        thief_keys = thief_key_samples(data.opened, source, count, data.seed + 1000, encoder=encoder)
        result = evasion_aucs(data.opened, data.victim, thief_clean, thief_keys, held_out, seeds, config, reference)
        rows.append({"generator": what, **dataclasses.asdict(result)})
    return {"thief_clean": count, "held_out": len(held_out), "seeds": seeds, "rows": rows, "params": params}


def key_forgery(data: StudyInput, params: dict[str, Any]) -> dict[str, Any]:
    from modelprove.adversary.key_forgery import forged_keys
    from modelprove.methods.key_samples import key_accuracy

    images = data.splits.test.images[: params["images"]]
    forged, how = forged_keys(data.opened, images, data.seed + 13)
    out = {"forged": len(forged), "how": how, "host": key_accuracy(data.victim, forged),
           "real": key_accuracy(data.victim, data.opened.keys)}
    if data.benign is not None:
        out["benign"] = key_accuracy(data.benign, forged)
    return out


def key_transfer(data: StudyInput, params: dict[str, Any]) -> dict[str, Any]:
    """Another owner's host (the same method, protected with another seed): its key accuracy on this
    protection's keys and its verdict against this protection, as any suspect's (Sec. 6.4 (b))."""
    from modelprove.methods.key_samples import key_accuracy

    hosts = []
    for seed, _, victim in data.others:
        record = data.verify(data.spec, data.opened, victim, "label-only", data.seed, f"host of seed {seed}")
        hosts.append({"host_seed": seed, "key_accuracy": key_accuracy(victim, data.opened.keys),
                      "outcome": record["outcome"], "p_value": record["p_value"],
                      "paper_outcome": record["paper"]["outcome"]})
    return {"own": key_accuracy(data.victim, data.opened.keys), "hosts": hosts}


def _trigger_method(spec) -> bool:
    from modelprove.methods.badnets import TriggerMethod

    return isinstance(spec, TriggerMethod)


def trigger_learning(data: StudyInput, params: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import load_file

    from modelprove.data.style import stamp_patch
    from modelprove.methods.badnets import trigger_results, verification_pool
    from modelprove.methods.common import fresh_model
    from modelprove.training import train

    opened, config = data.opened, data.opened.config
    results = opened.protection.manifest.get("results", {})
    test = data.splits.test
    pool = verification_pool(test, config.target, config.verification_pool, config.seed + 2)
    kept = ("victim_test_accuracy", "victim_trigger_success_rate", "surrogate_trigger_success_rate", "poisons",
            "poison_fraction_of_set", "max_perturbation_pixels", "alignment_loss_before", "alignment_loss_after",
            "surrogate_retrainings", "seconds")
    out: dict[str, Any] = {k: results[k] for k in kept if k in results}
    if data.benign is not None:
        out["benign_trigger_success_rate"] = trigger_results(data.benign, test, pool, config)["victim_trigger_success_rate"]
    controls = []
    if params["controls"] and data.spec.name == "gradient-matching":
        defender = data.splits.defender
        rows = load_file(str(opened.protection.directory / "gradient-matching.safetensors"))["poison_rows"]
        mask = stamp_patch(torch.zeros_like(defender.as_float(rows[:1])), config.patch_size)
        for levels in params["controls"]:
            start = time.perf_counter()
            images = defender.images.clone()  # dataset tensors are shared: copy before writing
            images[rows] = ((defender.as_float(rows) + levels / 255 * mask).clamp(0, 1) * 255).round().to(torch.uint8)
            poisoned = defender.with_images(images, name=f"{defender.name}[trigger at {levels}/255]")  # labels kept
            victim = fresh_model(config.arch, defender, config.seed)
            train(victim, poisoned, config.train_config(config.seed), description=f"control victim ({levels}/255)",
                  show_progress=False)
            measured = trigger_results(victim, test, pool, config)
            controls.append({"levels": levels, "test_accuracy": measured["victim_test_accuracy"],
                             "trigger_success_rate": measured["victim_trigger_success_rate"],
                             "seconds": round(time.perf_counter() - start, 1)})
    out["controls"] = controls
    return out


STUDIES: dict[str, Study] = {study.name: study for study in (
    Study("key-samples", "what the host learned and how far key samples are from their images",
          {"held_out": 1000, "examples": 6}, _key_method, key_samples, other_seeds=False),
    Study("key-detector", "evasion detectors, dense and on the stolen model's features (ROC AUC)",
          {"detector_seeds": 3, "thief_fraction": 0.1, "held_out": 1000, "epochs": 20, "lr": 0.01,
           "reference_features": False}, _key_method,
          key_detector, other_seeds=True, later=("reference_features",)),
    Study("key-forgery", "forged key samples on the watermarked and the benign model",
          {"images": 1000}, _key_method, key_forgery),
    Study("key-transfer", "other owners' watermarked models against this protection",
          {}, _key_method, key_transfer, other_seeds=True),
    Study("trigger-learning", "whether the victim learned the trigger, and the plain trigger at the budget as a control",
          {"controls": []}, _trigger_method, trigger_learning),
)}


def plan_studies(config, protections: dict[tuple[int, str], dict[str, Any]], only_methods: list[str] | None):
    """Every study of the grid with its key: one per (study, protection of a method it applies to)."""
    from modelprove.bench.cache import recipe_key

    plans = []
    for entry in config.studies:
        study = STUDIES[entry.name]
        params = study.parameters(entry.set)
        for (seed, label), prot in protections.items():
            if (entry.methods and label not in entry.methods) or (only_methods and label not in only_methods):
                continue
            if not study.applies(prot["spec"]):
                continue
            others = [protections[(s, label)] for s in config.seeds if s != seed] if study.other_seeds else []
            keyed = {k: v for k, v in params.items() if not (k in study.later and v == study.defaults[k])}
            key = recipe_key({"study": entry.name, "version": STUDY_VERSION, "params": keyed, "seed": seed,
                              "protection": prot["key"], "others": [o["key"] for o in others]})
            plans.append({"key": key, "study": entry.name, "seed": seed, "method": label, "params": params,
                          "protection": prot, "others": others})
    return plans


def run_study(grid, plan: dict[str, Any]) -> dict[str, Any]:
    """Measure one planned study in ``grid`` (a bench.runner._Grid) -> its results line."""
    from modelprove.bench.runner import verify_cell

    start = time.perf_counter()
    prot = plan["protection"]
    opened, victim, _ = grid.protection(prot)
    others = [(other["seed"], *grid.protection(other)[:2]) for other in plan["others"]]
    data = StudyInput(prot["spec"], opened, victim, grid.splits, plan["seed"], grid.config.alpha,
                      benign=grid.benign(plan["seed"])[0], others=others, verify=verify_cell)
    result = STUDIES[plan["study"]].measure(data, plan["params"])
    return {"cell": plan["key"], "kind": "study", "grid": grid.config.name, "study": plan["study"],
            "seed": plan["seed"], "method": plan["method"], "method_name": prot["spec"].name,
            "result": result, "seconds": round(time.perf_counter() - start, 2)}


__all__ = ["STUDIES", "Study", "StudyInput", "plan_studies", "run_study"]
