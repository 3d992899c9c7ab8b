"""Training datasets: synthetic (no files), folder-of-renders, G-Objaverse, and tar shards of any of them."""
