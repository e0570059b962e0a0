"""robustsweep: distributed sweeps of robust fine-tuning methods for text classifiers.

The Python API is ``robustsweep.api`` (docs/api.md): ``api.train``, ``api.sweep``,
``api.report``, ... (not re-exported here: ``robustsweep.train``, ``.sweep``, ``.report`` and
``.evaluate`` are the sub-packages that implement them).
"""

__version__ = "0.1.0"
