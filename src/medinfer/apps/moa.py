"""`medinfer moa`: MoA profiling of the BBBC021 per-well profiles -> accuracies and figures.

Reads the three profile files (:func:`medinfer.profiling.profiles.read_profiles`), normalises
per plate against DMSO, builds the treatment profiles and predicts each treatment's MoA by
its cosine nearest neighbour under the NSC, NSCB and random protocols. Writes
``confusion_nsc.png``, ``confusion_nscb.png``, ``embedding_pca.png`` and ``moa.json``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medinfer.profiling.figures import confusion_figure, embedding_figure
from medinfer.profiling.moa import evaluate_protocols
from medinfer.profiling.normalize import normalize_per_plate, select_features, treatment_profiles
from medinfer.profiling.profiles import read_profiles

__all__ = ["DEFAULT_DATA", "run_moa"]

# The repository's sibling shared/ folder (a source checkout); --data overrides it.
DEFAULT_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "hcs-bbbc021" / "profiles"


def run_moa(data: Path | None, out: Path) -> dict[str, Any]:
    """Run the analysis on the profiles in ``data`` and write figures and JSON into ``out``.

    Returns:
        The summary: counts of wells, DMSO wells, treatments, compounds, MoAs and features,
        and per protocol the accuracy, scored/unscored counts and per-MoA accuracy.
    """
    data = Path(data) if data is not None else DEFAULT_DATA
    wells = read_profiles(data)
    selected = select_features(wells)
    t = treatment_profiles(normalize_per_plate(selected))
    results = evaluate_protocols(t)
    out.mkdir(parents=True, exist_ok=True)
    files = [confusion_figure(results[p], out / f"confusion_{p}.png") for p in ("nsc", "nscb")]
    files.append(embedding_figure(t, out / "embedding_pca.png"))
    summary: dict[str, Any] = {
        "data": str(data), "wells": wells.n_wells, "dmso_wells": int(wells.is_control.sum()),
        "treatments": t.n_treatments, "compounds": len(set(t.compound.tolist())),
        "moas": len(set(t.moa.tolist())), "features_in": len(wells.feature_names),
        "features_used": len(selected.feature_names),
        "method": "per-plate DMSO robust z-score, treatment median, 1-NN cosine",
        "protocols": {p: r.summary() for p, r in results.items()},
        "files": [str(f) for f in files],
    }
    (out / "moa.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
