"""What fits a detector: the LightningModule, builders, callbacks, detector kinds and resume."""
