"""Fraudulent ownership claims with forged key samples (blind watermark, Li et al. ACSAC 2019, Sec. 6.4).

A counterfeiter who intercepted some of the owner's key samples (or knows the method) makes new ones and
claims the model with them: if the watermarked model gives the forged samples the owner's labels, the
counterfeiter's claim looks as good as the owner's. The paper stamps the same "TEST" logo on other images
(> 91% on Zhang et al.'s model) and argues that its own key samples' differences are image-specific, so
transplanting them onto other images fails.
"""

from __future__ import annotations

import torch

from modelprove.core.errors import ModelproveError
from modelprove.methods.key_samples import KeySet


def forged_keys(opened, images: torch.Tensor, seed: int) -> tuple[KeySet, str]:
    """Forged key samples for the protection's method from uint8 ``images`` the counterfeiter holds, with the
    labels it would claim; -> (key set, how they were made).

    Blind watermark: each intercepted key's difference x_key − x added to another image, with that key's
    label. Adi: new abstract images, labels guessed at random. Zhang content/noise: the same pattern on other
    images, the target label. Zhang unrelated: other images of the other domain's class, the target label.
    """
    from modelprove.methods import key_watermarks as kw

    keys = opened.keys
    g = torch.Generator().manual_seed(seed)
    count = len(images)
    if opened.method == "blind-watermark":
        if keys.originals is None:
            raise ModelproveError("the blind watermark's key set has no originals, so no difference to transplant.")
        differences = keys.as_float() - keys.originals.float() / 255
        which = torch.randint(0, len(keys), (count,), generator=g)
        forged = ((images.float() / 255 + differences[which]).clamp(0, 1) * 255).round().to(torch.uint8)
        return KeySet(forged, keys.targets[which].clone()), "each key's difference x_key − x on another image, its t_key"
    config = opened.config
    if config.kind == "adi":
        labels = torch.randint(0, opened.host_card.num_classes, (count,), generator=g)
        return KeySet(kw.abstract_images(count, tuple(images.shape[1:]), seed), labels), \
            "new abstract images (another seed), labels guessed"
    target = torch.full((count,), int(keys.targets[0]), dtype=torch.int64)  # the target the keys carry
    if config.kind == "unrelated":
        from modelprove.data.substitute import load_substitute

        other = load_substitute(config.unrelated_source, like=tuple(images.shape[1:]))
        known = {bytes(image.numpy().tobytes()) for image in keys.images}
        rows = [i for i in (other.labels == config.unrelated_class).nonzero().flatten().tolist()
                if bytes(other.images[i].numpy().tobytes()) not in known]
        rows = torch.tensor(rows)[torch.randperm(len(rows), generator=g)[:count]]
        return KeySet(other.images[rows], target[: len(rows)]), \
            f"other {config.unrelated_source} images of class {config.unrelated_class}, the target label"
    return KeySet(kw.stamp(images, config, seed), target), "the same pattern on other images, the target label"


__all__ = ["forged_keys"]
