"""Step 3, the inside: feed-forward Gaussians form a shell, so the density is small again inside
the object. The voxels the shell encloses are set above the level, so that marching cubes finds
only the outer surface; holes in the shell up to about twice the typical Gaussian size, or where
the density stays above half the level, are sealed for this.
"""

from __future__ import annotations

import numpy as np

SEAL_SCALES = 1.0  # holes in the shell up to about twice this many typical Gaussian sizes are sealed,
SEAL_LEVEL = 0.5  # ... and so are holes where the density stays above this fraction of the level


def _fill_inside(density: np.ndarray, level: float, seal: int) -> tuple[np.ndarray, int]:
    """Set the voxels enclosed by the surface above ``level`` (package docstring, step 3).

    density: [X, Y, Z] -> (padded field [X + 2p, Y + 2p, Z + 2p] float32, p): the padding is below
    the level, so the surface is closed at the border of the grid."""
    from scipy import ndimage

    pad = seal + 1
    field_ = np.pad(density.astype(np.float32, copy=False), pad, mode="constant", constant_values=0.0)
    occupied = field_ > level
    cross = ndimage.generate_binary_structure(3, 1)
    # The outside: flood-filled from the border through the space that is empty even at a lower
    # level (SEAL_LEVEL x level) grown by ``seal`` voxels, which seals thin spots and holes of the
    # sheet of Gaussians; then grown back towards the surface (geodesically, never through it).
    sealed = ndimage.binary_dilation(field_ > SEAL_LEVEL * level, structure=cross, iterations=seal)
    labels, _ = ndimage.label(~sealed, structure=cross)
    outside = labels == labels[0, 0, 0]  # the padding is empty and connected
    del labels, sealed
    outside = ndimage.binary_dilation(outside, structure=cross, iterations=seal + 2, mask=~occupied)
    inside = ~outside & ~occupied
    field_[inside] = 2.0 * level
    return field_, pad
