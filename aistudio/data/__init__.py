"""Datasets as projects: dataset.json schema and validation, importers, datasets, the DataModule."""
