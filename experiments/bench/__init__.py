"""``make bench`` and ``make bench-gpu``: throughput of features, data loading and training, with NumPy references."""
