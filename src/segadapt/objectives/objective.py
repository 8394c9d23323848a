"""An objective: the configured terms (adapt.objective, term -> weight) combined by adapt.weighting.

adapt() and the held-out probe call only this: `objective(outputs)` for a training step's loss (and each
part's unweighted value, for the log), `objective.fixed(outputs)` for the held-out loss that compares
checkpoints (the configured weights, never the moving ones). Terms of weight 0 are left out.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from segadapt.config import OBJECTIVE_TERMS, AdaptConfig
from segadapt.errors import ConfigError
from segadapt.objectives.d2_labels import D2Labels
from segadapt.objectives.entropy_min import Entropy
from segadapt.objectives.features import Features
from segadapt.objectives.features_std import FeaturesStd
from segadapt.objectives.output_kl import OutputKL
from segadapt.objectives.paired_pseudo import PairedPseudo
from segadapt.objectives.term import Outputs, Term
from segadapt.objectives.weighting import Fixed, make_weighting

TERMS: dict[str, type[Term]] = {t.name: t for t in (Features, FeaturesStd, OutputKL, PairedPseudo, Entropy,
                                                     D2Labels)}
assert tuple(TERMS) == OBJECTIVE_TERMS, "config.OBJECTIVE_TERMS names the terms a config may give"


def make_term(name: str, cfg: AdaptConfig, taps: Mapping[str, float], ignore_index: int = 255) -> Term:
    """One term with the settings it reads (the feature terms: the taps and their weights)."""
    if name in ("features", "features_std"):
        return TERMS[name](taps)  # type: ignore[call-arg]
    if name == "output_kl":
        return OutputKL(cfg.temperature)
    if name == "paired_pseudo":
        return PairedPseudo(cfg.pseudo_keep)
    if name == "d2_labels":
        return D2Labels(ignore_index)
    return TERMS[name]()


class Objective(nn.Module):
    def __init__(self, terms: Mapping[str, Term], weights: Mapping[str, float], weighting: str = "fixed") -> None:
        super().__init__()
        self.terms = nn.ModuleDict(dict(terms))
        self.term_weights = dict(weights)
        self.parts = {part: self.term_weights[name] * w for name, term in self.terms.items()
                      for part, w in term.parts().items()}
        self.weighting = make_weighting(weighting, self.parts)
        # the held-out loss: the terms on pairs (labelled D2 images are trained on, so they compare nothing)
        paired = [name for name, term in self.terms.items() if not term.needs_labelled]
        self.static = Fixed({part: self.term_weights[name] * w for name in paired
                             for part, w in self.terms[name].parts().items()})

    @property
    def needs_maps(self) -> bool:
        return any(t.needs_maps for t in self.terms.values())

    @property
    def needs_logits(self) -> bool:
        return any(t.needs_logits for t in self.terms.values())

    @property
    def needs_labelled(self) -> bool:
        return any(t.needs_labelled for t in self.terms.values())

    @property
    def output_level(self) -> bool:
        """Whether a term reads predictions (what adapt.train_head applies to), not only feature maps."""
        return self.needs_logits or self.needs_labelled

    @property
    def features_only(self) -> bool:
        """The study's regression alone (what trains, what the log and messages call it, stay as they were)."""
        return list(self.terms) == ["features"]

    def losses(self, out: Outputs) -> dict[str, torch.Tensor]:
        """Each part's unweighted loss (terms on labelled D2 images only where `out` has labels)."""
        found: dict[str, torch.Tensor] = {}
        for term in self.terms.values():
            if out.labels is not None or not term.needs_labelled:
                found |= term(out)
        return found

    def forward(self, out: Outputs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss (adapt.weighting) and each part's unweighted loss."""
        losses = self.losses(out)
        return self.weighting(losses), losses

    def fixed(self, out: Outputs) -> torch.Tensor:
        """The loss on pairs with the configured weights: comparable between checkpoints of one run."""
        return self.static(self.losses(out))

    @property
    def on_pairs(self) -> bool:
        """Whether a term compares H2 on X2 with H1 on X1 (then the held-out pairs give a held-out loss)."""
        return bool(self.static.weights)

    @property
    def calibrates(self) -> bool:
        """Whether a term needs statistics of H1 on D1 (then adapt() hands `calibrate` a few batches of maps)."""
        return any(type(t).calibrate is not Term.calibrate for t in self.terms.values())

    def calibrate(self, teacher_maps: list[Mapping[str, torch.Tensor]]) -> None:
        for t in self.terms.values():
            t.calibrate(iter(teacher_maps))

    def term_values(self, parts: Mapping[str, float]) -> dict[str, float]:
        """Each term's own loss from its parts' values (a feature term: its tap-weighted sum)."""
        out: dict[str, float] = {}
        for name, term in self.terms.items():
            out[name] = sum(w * parts[p] for p, w in term.parts().items())
        return out


def build_objective(cfg: AdaptConfig, taps: Mapping[str, float], ignore_index: int = 255) -> Objective:
    """adapt.objective's terms of weight > 0 (config.check_objective has refused unknown names and negative
    weights), on the taps of adapt.layers with their weights; adapt.d2_labels adds d2_labels (weight 1 unless
    the table gives one). A term the run has no data for is one line."""
    if not cfg.objective:  # empty means "the model's default", which only the caller knows
        raise ConfigError("adapt.objective is empty: resolve it with models.contract.default_objective first")
    chosen = {name: w for name, w in cfg.objective.items() if w > 0}
    if cfg.d2_labels and "d2_labels" not in cfg.objective:
        chosen["d2_labels"] = 1.0
    if "d2_labels" in chosen and not cfg.d2_labels:
        raise ConfigError("adapt.objective has d2_labels but no labelled D2 images are given; pass --d2-labels DIR "
                          "or drop the term")
    if cfg.select == "labels" and not cfg.d2_labels:
        raise ConfigError("adapt.select = labels picks by the mIoU on labelled D2 images; pass --d2-labels DIR or "
                          "choose holdout_loss, agreement or entropy")
    if cfg.select == "holdout_loss" and list(chosen) == ["d2_labels"]:  # nothing is measured on held-out pairs
        raise ConfigError("adapt.objective has only d2_labels, so there is no held-out loss to pick a checkpoint by; "
                          "set adapt.select = labels (or agreement) or add a term on the pairs")
    return Objective({name: make_term(name, cfg, taps, ignore_index) for name in chosen}, chosen, cfg.weighting)
