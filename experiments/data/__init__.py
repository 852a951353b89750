"""Datasets, layouts and the LightningDataModule shared by every detector."""
