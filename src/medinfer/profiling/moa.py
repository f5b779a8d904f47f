"""Nearest-neighbour MoA prediction with cosine similarity, under three protocols.

* ``nsc`` (not-same-compound): the neighbour must be another compound.
* ``nscb`` (not-same-compound-or-batch): another compound whose wells share no batch
  (week) with the query's; a treatment left with no eligible neighbour is unscored.
* ``random``: the naive, flattering protocol: any other treatment, including the same
  compound at another concentration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medinfer.profiling.normalize import TreatmentProfiles

__all__ = ["PROTOCOLS", "MoaResult", "cosine_similarity", "eligible", "evaluate_protocols",
           "nearest_neighbour_moa"]

PROTOCOLS = ("nsc", "nscb", "random")


@dataclass(frozen=True)
class MoaResult:
    """1-NN MoA prediction of every treatment under one protocol.

    Attributes:
        protocol: ``nsc``, ``nscb`` or ``random``.
        accuracy: fraction of scored treatments whose neighbour has their MoA.
        per_moa: accuracy per true MoA (NaN for a MoA with no scored treatment).
        moas: the MoA labels, the order of ``confusion``'s axes.
        confusion: ``(n_moa, n_moa)`` counts, rows true MoA, columns predicted.
        neighbour: ``(n_treatments,)`` index of the chosen neighbour, -1 where unscored.
        predicted: ``(n_treatments,)`` predicted MoA, ``""`` where unscored.
        n_scored: treatments with an eligible neighbour.
        n_unscored: treatments without one.
    """

    protocol: str
    accuracy: float
    per_moa: dict[str, float]
    moas: tuple[str, ...]
    confusion: np.ndarray
    neighbour: np.ndarray
    predicted: np.ndarray
    n_scored: int
    n_unscored: int

    def summary(self) -> dict:
        """JSON-ready accuracies and counts."""
        return {"accuracy": round(self.accuracy, 4), "n_scored": self.n_scored,
                "n_unscored": self.n_unscored,
                "per_moa": {m: (None if np.isnan(a) else round(a, 4)) for m, a in self.per_moa.items()}}


def cosine_similarity(x: np.ndarray) -> np.ndarray:
    """``(n, n)`` cosine similarities of the rows of ``x`` ``(n, d)`` (a zero row gives 0)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    unit = x / np.where(norm > 0, norm, 1.0)
    return unit @ unit.T


def eligible(t: TreatmentProfiles, protocol: str) -> np.ndarray:
    """``(n, n)`` bool: may treatment ``j`` be the neighbour of treatment ``i``."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")
    n = t.n_treatments
    ok = ~np.eye(n, dtype=bool)
    if protocol in ("nsc", "nscb"):
        ok &= t.compound[:, None] != t.compound[None, :]
    if protocol == "nscb":
        ok &= np.array([[not (a & b) for b in t.batches] for a in t.batches], dtype=bool)
    return ok


def nearest_neighbour_moa(t: TreatmentProfiles, protocol: str) -> MoaResult:
    """Predict each treatment's MoA as that of its most cosine-similar eligible treatment."""
    ok = eligible(t, protocol)
    sim = np.where(ok, cosine_similarity(t.features), -np.inf)
    scored = ok.any(axis=1)
    neighbour = np.where(scored, np.argmax(sim, axis=1), -1)
    predicted = np.where(scored, t.moa[np.maximum(neighbour, 0)], "")
    moas = tuple(sorted(set(t.moa.tolist())))
    index = {m: k for k, m in enumerate(moas)}
    confusion = np.zeros((len(moas), len(moas)), dtype=np.int64)
    for true, pred in zip(t.moa[scored], predicted[scored]):
        confusion[index[true], index[pred]] += 1
    hits = (predicted == t.moa) & scored
    per_moa = {}
    for m in moas:
        rows = scored & (t.moa == m)
        per_moa[m] = float(hits[rows].mean()) if rows.any() else float("nan")
    n_scored = int(scored.sum())
    return MoaResult(protocol=protocol, accuracy=float(hits.sum() / n_scored) if n_scored else float("nan"),
                     per_moa=per_moa, moas=moas, confusion=confusion, neighbour=neighbour,
                     predicted=predicted, n_scored=n_scored, n_unscored=t.n_treatments - n_scored)


def evaluate_protocols(t: TreatmentProfiles, protocols: tuple[str, ...] = PROTOCOLS) -> dict[str, MoaResult]:
    """:func:`nearest_neighbour_moa` under each protocol."""
    return {p: nearest_neighbour_moa(t, p) for p in protocols}
