"""Trainer factory, hardware resolution, schedulers and the run-directory callback."""
