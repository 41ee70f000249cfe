"""ServeLab: make a model-serving pipeline fast without breaking it."""

__version__ = "0.1.0"
