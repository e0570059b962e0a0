"""The one owner of what a trial and a sweep leave on disk: ``TrialDir`` (a trial's records and
checkpoints) and the sweep ``Manifest``; every JSON record goes through ``atomic_write_json``.
Nobody else spells a file name of the layout."""

from robustsweep.state.files import atomic_write_json, read_json
from robustsweep.state.manifest import Manifest
from robustsweep.state.trial import TrialDir

__all__ = ["Manifest", "TrialDir", "atomic_write_json", "read_json"]
