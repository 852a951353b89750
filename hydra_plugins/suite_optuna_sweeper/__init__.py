"""The suite's Optuna sweeper (``hydra/sweeper=suite_optuna``): persistent studies, trials pruned per epoch."""
