"""What goes in and out on disk: images read robustly, datasets (plain folders, SA-1B), synthetic shapes, atomic writes.

Import from the modules; this package imports nothing, so that reading an image never loads pycocotools.
"""
