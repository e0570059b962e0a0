"""robustsweep: distributed sweeps of robust fine-tuning methods for text classifiers."""

__version__ = "0.1.0"
