"""Training datasets: synthetic (no files) and folder-of-renders."""
