"""Feed-forward 3D Gaussian generation: models, rendering, cameras, data."""
