"""segc: a compiler front-end for segmentation and text-detection models."""
__version__ = "0.1.0"
