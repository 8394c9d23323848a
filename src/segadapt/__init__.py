"""segadapt: adapt a segmentation network to a new, unlabelled image domain by regressing feature maps.

The Python API (segadapt.api, segadapt.card, segadapt.predict) is imported on first use, so `import segadapt`
stays cheap for the command line:

    h2 = segadapt.adapt_model(h1, pairs, iterations=200).model
    segadapt.evaluate_model(h2, labelled).miou
    segadapt.Predictor.from_path("runs/adapt-...").predict("frame.png").mask
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from segadapt.version import __version__

# public name -> the module that holds it; imported on first use, so `import segadapt` (and the CLI's start)
# stays light: no torch until a name is used
_API = {
    "load_model": "segadapt.api", "adapt_model": "segadapt.api", "evaluate_model": "segadapt.api",
    "AdaptResult": "segadapt.api", "Metrics": "segadapt.api", "ModelCard": "segadapt.card",
    "card_of": "segadapt.card", "Predictor": "segadapt.predict", "Prediction": "segadapt.predict",
}
__all__ = ["AdaptResult", "Metrics", "ModelCard", "Prediction", "Predictor", "__version__", "adapt_model", "card_of",
           "evaluate_model", "load_model"]

def __getattr__(name: str) -> Any:
    """The API's names, imported when first used (PEP 562)."""
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'segadapt' has no attribute {name!r}")
