"""A records directory: finished trials' results records gathered in one place, across sweeps.

A long grid sweep (the reproduction study) outlives one machine: each finished trial's
results record is copied to ``sweep.records_dir`` under a name that carries its config hash,
and a new grid sweep on any machine skips the cells whose hash is already recorded there. The
records are small JSON files (no weights) meant to be committed; reports are built from them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from robustsweep.config import JobConfig
from robustsweep.state.files import atomic_write_json
from robustsweep.sweep.params import NUMBER_KEY, GridCell, trial_job


def record_name(record: dict[str, Any]) -> str:
    """``<method>-seed<k>-<config hash>.json``: readable, unique per trained configuration."""
    method = re.sub(r"[^A-Za-z0-9_.-]", "_", str(record.get("method", "trial")))
    return f"{method}-seed{record.get('seed', 'x')}-{record['config_hash']}.json"


def recorded_hashes(records_dir: Path) -> set[str]:
    """Config hashes of the records already in ``records_dir`` (unreadable files are ignored)."""
    hashes: set[str] = set()
    if not records_dir.is_dir():
        return hashes
    for path in records_dir.glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("config_hash"):
            hashes.add(str(record["config_hash"]))
    return hashes


def cell_hash(base: JobConfig, cell: GridCell) -> str:
    """The config hash the trial of ``cell`` will record (the same job ``sweep_trial`` trains)."""
    from robustsweep.train.results import config_hash

    cfg = trial_job(
        base,
        {**cell.params(), NUMBER_KEY: 0},
        output_dir=Path(base.output_dir or "runs"),
        tracking_uri=None,
        cpus_per_worker=base.scaling.cpus_per_worker or 1.0,
    )
    return config_hash(cfg)


def pending_cells(base: JobConfig, cells: list[GridCell], records_dir: Path | None) -> list[GridCell]:
    """The cells of a grid that have no record in ``records_dir`` yet."""
    if records_dir is None:
        return list(cells)
    done = recorded_hashes(records_dir)
    return [cell for cell in cells if cell_hash(base, cell) not in done]


def collect(record: dict[str, Any], records_dir: Path) -> Path:
    """Copy one finished trial's record into ``records_dir`` (atomic; same name = same config)."""
    target = records_dir / record_name(record)
    atomic_write_json(target, record)
    return target
