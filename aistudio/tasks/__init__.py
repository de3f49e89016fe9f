"""LightningModules: a shared base (model, optimizer, scheduler, checkpoint contract) + per-task steps."""
