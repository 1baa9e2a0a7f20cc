"""Using a model: `SamPredictor` (encode an image once, decode many prompts), segment-everything, the fast
exact mask decoder, and the CPU allocator setting for serving."""
