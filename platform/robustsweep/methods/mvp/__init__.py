"""MVP (Raman et al., 2023): the method and the masked-LM head its prompts read label words from."""

from robustsweep.methods.mvp import mlm_head
from robustsweep.methods.mvp.method import HEAD_ATTR, MVP, MVPKnobs

__all__ = ["HEAD_ATTR", "MVP", "MVPKnobs", "mlm_head"]
