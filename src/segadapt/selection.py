"""Label-free model selection for adaptation: D2 has no labels, so which checkpoint of H2 should one keep?

Three signals that need no label, measured on pairs held out from training (`SIGNALS`):
- the held-out loss (the training objective, with its configured weights, on pairs H2 never fitted; lower is
  better; comparable only between checkpoints of one objective and layer preset);
- the agreement of H2's labels on the held-out D2 images with H1's on their D1 twins: the mIoU between the
  two label maps (higher is better). It asks whether H2 still predicts on D2 what H1 predicts on D1, the
  thing adaptation is for, whatever the objective's scale;
- the mean prediction entropy of H2 on the held-out D2 images, normalised by log(classes) to 0..1
  (comparable across presets, but a model can be confidently wrong).
With a few labelled D2 images (adapt.d2_labels) each probe also holds H2's mIoU on them (`labels`, higher is
better; not label-free, and measured on images H2 trains on). adapt.select names the signal that picks
model_selected. Where D2 labels do exist (the sweep), `agreement` (the function) says how well each signal
tracks mIoU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from segadapt.data.pairs import PairedDataset
from segadapt.losses import masked_pixel_mean, tap_mask
from segadapt.metrics import confusion_matrix, scores
from segadapt.models.contract import conform
from segadapt.models.modes import modes_restored
from segadapt.objectives import Objective, Outputs
from segadapt.objectives.entropy import pixel_entropy
from segadapt.objectives.term import model_outputs

# signal -> +1 when higher is better, -1 when lower is; the key each is reported under in the sweep's tables
SIGNALS = {"holdout_loss": -1, "agreement": 1, "entropy": -1, "labels": 1}
SHORT = {"holdout_loss": "loss", "agreement": "agreement", "entropy": "entropy", "labels": "labels"}


def split_holdout(n: int, holdout: int, seed: int) -> tuple[list[int], list[int]]:
    """A seeded random subset of pairs for selection, and the rest for training; never more than a fifth."""
    holdout = max(0, min(holdout, n // 5))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    return sorted(order[:holdout]), sorted(order[holdout:])


def probe_steps(iterations: int, probes: int) -> set[int]:
    """`probes` evenly spaced steps ending at the last one."""
    return {max(1, round(iterations * (k + 1) / probes)) for k in range(probes)} if probes > 0 else set()


class HoldoutProbe:
    """Fixed held-out pairs (augmentation drawn once, seeded) and the teacher's outputs on them: the maps the
    objective reads and, always, its logits (for the agreement)."""

    def __init__(self, pairs: PairedDataset, ids: Sequence[int], teacher: nn.Module, objective: Objective,
                 taps: Sequence[str], seed: int, device: torch.device,
                 labels: Callable[[nn.Module], float] | None = None) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            items = [pairs[i] for i in ids]
        self.x1 = torch.stack([item[0] for item in items]).to(device)
        self.x2 = torch.stack([item[1] for item in items]).to(device)
        # registered pairs end with a validity mask: the held-out loss is then masked as the training loss is
        masked = getattr(pairs, "with_valid", False)  # a plain list of (x1, x2) pairs has no masks
        self.valid = torch.stack([item[-1] for item in items]).to(device) if masked else None
        self.objective, self.taps, self.labels = objective, list(taps), labels
        with torch.inference_mode():
            maps, logits = model_outputs(teacher, conform(teacher).features, self.x1, self.taps,
                                         objective.needs_maps, True)
        self.target = {k: v.clone() for k, v in maps.items()}
        assert logits is not None
        self.logits = logits.float().clone()

    @torch.inference_mode()
    def measure(self, student: nn.Module) -> dict[str, float]:
        with modes_restored(student):  # student.train() afterwards would undo adaptation's dropout/BN modes
            student.eval()
            maps, logits = model_outputs(student, conform(student).features, self.x2, self.taps,
                                         self.objective.needs_maps, True)
            labelled = {} if self.labels is None else {"labels": self.labels(student)}
        assert logits is not None
        logits = logits.float()
        point: dict[str, float] = {}
        if self.objective.on_pairs:  # d2_labels alone has no held-out loss (its images are trained on)
            point["holdout_loss"] = float(self.objective.fixed(Outputs(self.target, maps, self.logits, logits,
                                                                       self.valid)))
        point["entropy"] = float(masked_pixel_mean(pixel_entropy(logits), self.valid))
        return {**point, "agreement": label_agreement(logits, self.logits, self.valid), **labelled}


def label_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    valid: torch.Tensor | None = None) -> float:
    """mIoU between the argmax label maps of two predictions (the teacher's as the reference), over valid
    pixels; 1 when they agree everywhere. Classes neither predicts are left out, as mIoU does."""
    classes = teacher_logits.shape[1]
    reference = teacher_logits.argmax(1)
    if valid is not None:  # pixels without a source are ignored, as in the loss
        reference = torch.where(tap_mask(valid, reference.shape[-2:])[:, 0] > 0, reference, classes)
    conf = confusion_matrix(student_logits.argmax(1), reference, classes, ignore_index=classes)
    return scores(conf).miou


def better(point: Mapping[str, float], than: Mapping[str, float], signal: str) -> bool:
    """Whether a probe is a better label-free choice than another by `signal` (ties keep the earlier one)."""
    a, b = point[signal], than[signal]
    if math.isnan(b):
        return not math.isnan(a)
    return SIGNALS[signal] * (a - b) > 0


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Rank correlation (ties get their mean rank); nan when either side is constant or too short."""
    if len(a) < 2:
        return float("nan")

    def ranks(x: Sequence[float]) -> list[float]:
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va, vb = sum((x - ma) ** 2 for x in ra), sum((y - mb) ** 2 for y in rb)
    return cov / math.sqrt(va * vb) if va and vb else float("nan")


def agreement(points: Sequence[Mapping[str, float]], select: str = "holdout_loss") -> dict[str, float | None]:
    """How the label-free choices among checkpoints compare with the mIoU-best one (needs a 'miou' per point):
    the one `select` makes (selected_*, regret_points), and for every signal the probes hold its regret and
    its rank correlation with mIoU (+1: it orders checkpoints exactly as mIoU does)."""
    best = max(points, key=lambda p: p["miou"])
    signals = [s for s in SIGNALS if all(s in p for p in points)]
    chosen = {s: choose(points, s) for s in signals}
    out: dict[str, float | None] = {
        "select": select,  # type: ignore[dict-item]
        "selected_step": chosen[select]["step"],
        "selected_miou": chosen[select]["miou"],
        "best_step": best["step"],
        "best_miou": best["miou"],
        "final_miou": points[-1]["miou"],
        "regret_points": regret(best, chosen[select]),
    }
    for s in signals:
        out[f"regret_{SHORT[s]}"] = regret(best, chosen[s])
        out[f"rank_corr_{SHORT[s]}"] = finite_or_none(spearman([SIGNALS[s] * p[s] for p in points],
                                                               [p["miou"] for p in points]))
    return out


def choose(points: Sequence[Mapping[str, float]], signal: str) -> Mapping[str, float]:
    """The probe `signal` picks, as adapt() picks it (the first of equals)."""
    pick = points[0]
    for p in points[1:]:
        if better(p, pick, signal):
            pick = p
    return pick


def regret(best: Mapping[str, float], chosen: Mapping[str, float]) -> float:
    return round(100 * (best["miou"] - chosen["miou"]), 3)


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: an undefined correlation (constant mIoU, one probe) is written as null."""
    return x if math.isfinite(x) else None
