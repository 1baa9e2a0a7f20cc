"""How good a model is: prompted mask logits, IoU and SAM's mask loss (`masks`), and mIoU on annotated data (`miou`)."""
