"""Experiment layer of the suite: tasks, training, evaluation, data, tracking and benchmarks.

See docs/architecture.md for the layers and what each package may import.
"""
