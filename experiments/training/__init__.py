"""What fits a detector: the LightningModule, builders, callbacks, detector kinds, checkpoints and resume."""
