"""The MOVE paper's CIFAR-10 numbers the benchmark prints beside ours (MOVE TPAMI Tables 3, 5 and 7).

Read from ../shared/papers/move-tpami-pdf-text.txt, where the tables survived as columns of numbers
and every p-value as a power of ten ("10−12" is stored as 1e-12). Dataset Inference reports no
delta_mu (None). Where the extraction garbled a cell (BadNets' black-box distillation delta_mu reads
"−3 −10"), we read it as −10^-3. Values are (delta_mu, p-value).
"""

from __future__ import annotations

ROWS = ("Direct-copy", "Distillation", "Zero-shot", "Fine-tuning", "Label-query", "Logit-query", "Independent")


def _rows(*pairs: tuple[float | None, float]) -> dict[str, tuple[float | None, float]]:
    return dict(zip(ROWS, pairs))


# MOVE TPAMI Table 3: CIFAR-10, white-box.
WHITE_BOX = {
    "badnets": _rows((0.91, 1e-12), (-1e-3, 0.32), (1e-25, 0.22), (1e-23, 0.28), (1e-27, 0.20), (1e-27, 0.23),
                     (1e-20, 0.33)),
    "gradient-matching": _rows((0.88, 1e-12), (1e-7, 0.20), (1e-24, 0.22), (1e-27, 0.28), (1e-30, 0.34),
                               (1e-23, 0.33), (1e-12, 0.99)),
    "entangled": _rows((0.99, 1e-35), (0.01, 0.33), (1e-3, 1e-3), (0.35, 0.01), (1e-5, 0.62), (1e-6, 0.64),
                       (1e-22, 0.68)),
    "dataset-inference": _rows((None, 1e-4), (None, 1e-4), (None, 1e-2), (None, 1e-5), (None, 1e-3), (None, 1e-3),
                               (None, 1e-31)),
    "move": _rows((0.97, 1e-7), (0.53, 1e-7), (0.52, 1e-5), (0.50, 1e-6), (0.52, 1e-4), (0.54, 1e-4), (0.00, 1.00)),
}

# MOVE TPAMI Table 5: CIFAR-10, black-box.
BLACK_BOX = {
    "badnets": _rows((0.79, 1e-60), (-1e-3, 0.02), (-1e-25, 0.29), (1e-3, 0.08), (1e-4, 0.11), (1e-3, 0.10),
                     (1e-20, 0.33)),
    "gradient-matching": _rows((0.03, 1e-5), (0.01, 0.14), (1e-4, 1e-3), (1e-3, 0.17), (0.01, 0.11), (1e-23, 0.08),
                               (1e-12, 1.00)),
    "entangled": _rows((0.54, 1e-35), (0.01, 1e-3), (1e-3, 0.17), (1e-3, 0.05), (1e-3, 0.05), (1e-35, 0.11),
                       (0.00, 1.00)),
    "dataset-inference": _rows((None, 1e-39), (None, 0.32), (None, 1e-5), (None, 1e-6), (None, 1e-7), (None, 1e-3),
                               (None, 1e-38)),
    "move": _rows((0.84, 1e-74), (0.54, 1e-24), (0.39, 1e-15), (0.37, 1e-14), (0.07, 1e-3), (0.17, 1e-6),
                  (1e-4, 0.98)),
}

# MOVE TPAMI Table 7: MOVE against two multi-stage chains on CIFAR-10 (p-values only).
MULTISTAGE = {
    "white-box": {"Direct-copy": 1e-7, "Direct-copy > Zero-shot": 1e-5, "Direct-copy > Zero-shot > Zero-shot": 1e-4,
                  "Direct-copy > Logit-query": 1e-4, "Direct-copy > Logit-query > Zero-shot": 0.01},
    "black-box": {"Direct-copy": 1e-74, "Direct-copy > Zero-shot": 1e-15, "Direct-copy > Zero-shot > Zero-shot": 1e-5,
                  "Direct-copy > Logit-query": 1e-6, "Direct-copy > Logit-query > Zero-shot": 1e-3},
}


def paper_value(table: str, setting: str, method: str, row: str | None) -> tuple[float | None, float] | None:
    """(delta_mu, p) of the paper's cell, or None when the paper has no such cell."""
    if row is None:
        return None
    if table == "move-cifar10":
        values = (WHITE_BOX if setting == "white-box" else BLACK_BOX).get(method, {})
        return values.get(row)
    if table == "move-multistage" and method == "move":
        p = MULTISTAGE.get(setting, {}).get(row)
        return None if p is None else (None, p)
    return None


# The blind watermark's claims (Li et al., ACSAC 2019), printed beside the key-sample watermark studies.
# Table 2: key accuracy of five CIFAR-10 hosts while fine-tuned on 80% of the test set, at 0 and 100 epochs.
BLIND_WATERMARK_FINETUNING = {"V-13": (95.75, 90.00), "V-16": (96.50, 95.50), "R-18": (97.00, 87.50),
                              "R-34": (93.40, 84.75), "PreActR-18": (91.75, 87.00)}
# Sec. 6.3, Figs. 6-7: detector ROC AUC, the blind watermark's vs the other methods' (Adi, Zhang, ...).
BLIND_WATERMARK_DETECTORS = {"dense": (0.50, 0.94), "feature": (0.65, 0.98)}
# Sec. 5.1: 100 epochs of 600 MNIST iterations (k1 = 1): 60,000 encoder and discriminator updates; 600 key
# samples, 20 per iteration: each seen 60,000 * 20 / 600 = 2,000 times (CIFAR-10: 50,000 updates, 2,000).
BLIND_WATERMARK_SCHEDULE = {"encoder_updates": 60_000, "key_exposures": 2_000}
