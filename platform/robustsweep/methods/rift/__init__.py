"""RIFT (Dong et al., NeurIPS 2021): the method and its synonym tables."""

from robustsweep.methods.rift.method import RIFT, RIFTKnobs

__all__ = ["RIFT", "RIFTKnobs"]
