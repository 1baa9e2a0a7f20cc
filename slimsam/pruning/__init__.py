"""Structural pruning: channel groups of the ViT encoder, importance criteria, and SlimSAM's two pruning steps."""
