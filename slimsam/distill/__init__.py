"""Distillation: encoder features, the two aligning losses, the training loop, multi-GPU setup, and the whole
method (prune, align, prune, align, export) in one resumable run."""
