"""Step 2, the surface level: ``threshold`` times the typical density at the Gaussians' centres
(the opacity-weighted median of ``D`` there), the density of the sheet of Gaussians that forms the
surface, so that one threshold suits any number and size of Gaussians.
"""

from __future__ import annotations

import numpy as np
import torch

from core.mesh.density import Kernels, _weighted_median, density_at

REFERENCE_SAMPLES = 2048  # centres at which the reference density is evaluated


def _surface_level(density: np.ndarray, kernels: Kernels, threshold: float) -> tuple[float, float]:
    """(level, reference): reference = opacity-weighted median of the density at the Gaussians'
    centres, estimated exactly (not from the grid, which flattens peaks) at up to REFERENCE_SAMPLES
    centres drawn with probability proportional to opacity (seeded: the same input gives the same
    mesh)."""
    n = kernels.xyz.shape[0]
    weights = kernels.opacity.double().cpu().numpy()
    rng = np.random.default_rng(0)
    if n > REFERENCE_SAMPLES:
        rows = np.sort(rng.choice(n, size=REFERENCE_SAMPLES, replace=True, p=weights / weights.sum()))
        weights = np.ones(rows.size)
    else:
        rows = np.arange(n)
    at_centres = density_at(kernels, kernels.xyz[torch.from_numpy(rows).to(kernels.xyz.device)])
    reference = _weighted_median(at_centres.double().cpu().numpy(), weights)
    if not reference > 0:
        reference = float(density.max())
    return threshold * reference, reference
