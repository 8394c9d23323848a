"""What H2 is trained to minimise (adapt.objective): the study's feature regression and output-level terms,
one module each, combined by objective.py with the weighting of weighting.py; and the output-level
primitives they share with the label-free peers (pseudo-labels, prediction entropy)."""

from segadapt.objectives.objective import TERMS, Objective, build_objective
from segadapt.objectives.term import Outputs, Term

__all__ = ["TERMS", "Objective", "Outputs", "Term", "build_objective"]
