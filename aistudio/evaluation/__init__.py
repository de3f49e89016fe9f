"""Using a trained run: rebuild it from its frozen config.json and evaluate it (predict and export next)."""
