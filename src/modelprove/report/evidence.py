"""The protection's evidence images, per method: what the owner can show a person (and keeps secret).

Each function reads an opened (hash-checked) protection, never writes to it, and returns galleries:
rows of uint8 images (N x C x H x W) with a label per row and per column. ``EVIDENCE_IMAGES`` maps a
method's registry name to its function; a method without an entry has no pictures to show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from modelprove.data.style import stamp_patch
from modelprove.methods import key_watermarks
from modelprove.methods.badnets import POOL_FILE
from modelprove.methods.blind_watermark import LOGO_FILE
from modelprove.methods.key_samples import KEYS_FILE
from modelprove.methods.protection import Protection

SHOWN = 8  # images per gallery: enough to see what the evidence is, few enough to stay on one screen


@dataclass
class Gallery:
    """Rows of images to show side by side (each row N x C x H x W uint8, the same N)."""

    title: str
    caption: str
    rows: list[tuple[str, torch.Tensor]]
    columns: list[str] = field(default_factory=list)


@dataclass
class Attachment:
    """A file of the protection shown as it is (the style image, the logo)."""

    title: str
    caption: str
    path: Path


def _classes(protection: Protection) -> list[str]:
    return list(protection.manifest.get("dataset", {}).get("classes", []))


def _label(classes: list[str], index: int) -> str:
    return classes[index] if 0 <= index < len(classes) else str(index)


def _tensors(protection: Protection, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(protection.path(name)))  # read-only; the manifest listed and hash-checked it


def move_images(protection: Protection) -> tuple[list[Gallery], list[Attachment]]:
    """MOVE Sec. 5.2: the verification pool's transformed images x' beside their originals x."""
    stored = _tensors(protection, "transformed.safetensors")
    rows = torch.nonzero(stored["role"].bool()).squeeze(1)[:SHOWN] if "role" in stored else torch.arange(SHOWN)
    rows = rows[rows < len(stored["images"])]
    classes = _classes(protection)
    gallery = Gallery("Transformed images beside their originals",
                      "Top: training images of the protected model as they were; bottom: the same images after "
                      "style transfer with the owner's secret style image (the external feature, MOVE Sec. 5.2). "
                      "The verification queries the suspect with images like these.",
                      [("original x", stored["originals"][rows]), ("transformed x'", stored["images"][rows])],
                      [_label(classes, int(y)) for y in stored["labels"][rows]])
    styles = [name for name in protection.manifest["files"] if name.startswith("style.")]
    attachments = [Attachment("The secret style image", "The image whose style was transferred onto the training "
                              "images above; only the owner has it.", protection.path(styles[0]))] if styles else []
    return [gallery], attachments


def key_images(protection: Protection) -> tuple[list[Gallery], list[Attachment]]:
    """Key samples with the labels the watermarked model gives them (Adi, Zhang, the blind watermark)."""
    stored = _tensors(protection, KEYS_FILE)
    classes = _classes(protection)
    shown = slice(0, SHOWN)
    rows = ([("original", stored["originals"][shown])] if "originals" in stored else []) + \
        [("key sample", stored["images"][shown])]
    gallery = Gallery("Key samples and their secret labels",
                      "Each key sample with the label only the owner's watermarked model gives it (above the "
                      "column)" + (", under the ordinary image it was made from" if "originals" in stored else "")
                      + ". A suspect that gives these labels learned the watermark.",
                      rows, [f"label: {_label(classes, int(t))}" for t in stored["targets"][shown]])
    logo = [Attachment("The owner's logo", "The logo the encoder hides in every key sample (blind watermark, "
                       "Li et al. 2019).", protection.path(LOGO_FILE))] if LOGO_FILE in protection.manifest["files"] else []
    return [gallery], logo


def fingerprint_images(protection: Protection) -> tuple[list[Gallery], list[Attachment]]:
    """CAE / IPGuard: fingerprint examples with the label the protected model gives them."""
    stored = _tensors(protection, "fingerprint.safetensors")
    classes = _classes(protection)
    shown = slice(0, SHOWN)
    images = stored["images"][shown]
    if images.dtype != torch.uint8:  # the fingerprint is kept as floats in [0, 1]
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return [Gallery("Fingerprint examples",
                    "Adversarial examples of the protected model with the label it gives each (above); a model "
                    "derived from it tends to give the same labels, an independent model does not.",
                    [("fingerprint", images)], [f"label: {_label(classes, int(t))}" for t in stored["targets"][shown]])], []


def trigger_images(size_field: str) -> Callable[[Protection], tuple[list[Gallery], list[Attachment]]]:
    """BadNets-style triggers: verification images without and with the trigger stamped (its size is
    the config's ``size_field``)."""

    def show(protection: Protection) -> tuple[list[Gallery], list[Attachment]]:
        stored = _tensors(protection, POOL_FILE)  # entangled writes the same name
        images = stored["images"][:SHOWN]
        size = int(protection.config.get(size_field, 3))
        target = protection.config.get("target", protection.config.get("target_class"))
        classes = _classes(protection)
        columns = [_label(classes, int(y)) for y in stored["labels"][:SHOWN]] if "labels" in stored else []
        return [Gallery("Verification images with and without the trigger",
                        f"Top: held-out images; bottom: the same with the secret {size}x{size} trigger stamped. A "
                        "model that learned the watermark moves them towards the target class"
                        + (f" ({_label(classes, int(target))})." if target is not None else "."),
                        [("benign", images), ("triggered", stamp_patch(images, size))], columns)], []

    return show


def dataset_inference_images(protection: Protection) -> tuple[list[Gallery], list[Attachment]]:
    """Dataset Inference: private (the owner's training data) and public samples."""
    stored = _tensors(protection, "samples.safetensors")
    return [Gallery("Private and public samples",
                    "Top: the owner's private training images; bottom: public images of the same task. A model "
                    "trained on the private ones places them further from its decision boundaries.",
                    [("private", stored["private_images"][:SHOWN]), ("public", stored["public_images"][:SHOWN])])], []


EVIDENCE_IMAGES: dict[str, Callable[[Protection], tuple[list[Gallery], list[Attachment]]]] = {
    "move": move_images,
    "blind-watermark": key_images,
    **{name: key_images for _, name, _ in key_watermarks.REGISTRY},
    "cae": fingerprint_images,
    "ipguard": fingerprint_images,
    "badnets": trigger_images("patch_size"),
    "gradient-matching": trigger_images("patch_size"),
    "entangled": trigger_images("trigger_size"),
    "dataset-inference": dataset_inference_images,
}


def evidence_images(protection: Protection) -> tuple[list[Gallery], list[Attachment]]:
    """The galleries and attachments of ``protection``'s method (none for a method without an entry)."""
    show = EVIDENCE_IMAGES.get(protection.method)
    return show(protection) if show else ([], [])
