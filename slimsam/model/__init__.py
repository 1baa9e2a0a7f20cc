"""What a SAM is here: named configs, loading/saving/export, the (pruned) encoder's shape, params/MACs,
random-weight models, and the exact fast encoder attention every loaded model runs."""
