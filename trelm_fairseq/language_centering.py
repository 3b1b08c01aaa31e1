"""Per-language centring and whitening of sentence features (shared/DESIGN.md, "Zero-shot with
language-neutral features").

A linear classifier trained on language S's features and applied to language T's suffers from
any constant offset between the two languages' feature clouds, even when translations are each
other's nearest neighbours (CSLS retrieval ranks, so it does not see the offset).  Removing each
language's own mean feature, estimated from unlabelled text of that language, takes the offset
out; whitening also equalises the two clouds' covariances.  Neither needs labels or parallel text.
"""
from typing import Dict, Optional

import numpy as np

from .errors import TreLMError

# how features are normalised before a probe: as they are; each language's mean removed; each
# language's mean removed and its covariance whitened
NORMALISATIONS = ("raw", "centred", "whitened")


def language_stats(features: np.ndarray, whiten: bool = False, what: str = "features") -> Dict[str, np.ndarray]:
    """{"mean": (d,)} of one language's (n, d) unlabelled ``features``; with ``whiten`` also
    {"whitening": (d, d)}, the inverse square root of their Ledoit-Wolf shrunk covariance (n can
    be close to d, where the sample covariance is ill-conditioned)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise TreLMError(f"{what}: {features.shape} array; expected (n >= 2, d) sentence features of one language")
    stats = {"mean": features.mean(0)}
    if whiten:
        from sklearn.covariance import LedoitWolf

        values, vectors = np.linalg.eigh(LedoitWolf().fit(features).covariance_)
        stats["whitening"] = (vectors / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T
    return stats


def normalise(features: np.ndarray, stats: Optional[Dict[str, np.ndarray]]) -> np.ndarray:
    """``features`` (n, d) with ``stats``' mean removed (and whitened, when stats has a
    whitening); ``None`` leaves them as they are."""
    features = np.asarray(features, dtype=np.float64)
    if stats is None:
        return features
    if features.shape[-1] != stats["mean"].shape[-1]:
        raise TreLMError(f"features of width {features.shape[-1]} but language statistics of width "
                         f"{stats['mean'].shape[-1]}: expected both from the same model and layer")
    centred = features - stats["mean"]
    return centred @ stats["whitening"] if "whitening" in stats else centred


def stats_for(normalisation: str, unlabelled: np.ndarray, what: str = "features") -> Optional[Dict[str, np.ndarray]]:
    """The statistics a NORMALISATIONS entry needs from one language's unlabelled features."""
    if normalisation not in NORMALISATIONS:
        raise TreLMError(f"normalisation {normalisation!r}: expected one of {', '.join(NORMALISATIONS)}")
    return None if normalisation == "raw" else language_stats(unlabelled, normalisation == "whitened", what)
