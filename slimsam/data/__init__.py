"""What goes in and out on disk: images read robustly, datasets (plain folders; annotated images as SA-1B, COCO
or mask folders, one loader and a registry of formats), synthetic shapes, atomic writes.

Import from the modules; this package imports nothing, so that reading an image never loads pycocotools.
"""
