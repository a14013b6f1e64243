"""Text to tensors: loading and blending datasets, templates, one dataset module per format, collators."""
