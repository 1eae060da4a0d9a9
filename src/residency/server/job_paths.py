"""Files a launched job may name on the coordinator host: only those in its data folder.

Anyone who may launch a job names paths (``[data] test``, a checkpoint in ``[model] path``)
that the coordinator then opens. Unconfined, a job naming ``/etc/passwd``, or a symlink to
it, turns each refusal into a file oracle. So every such path is resolved (symlinks followed)
and must land inside the folder ``coordinator.toml`` names as ``data``; the refusal reads the
same whether the file is absent or outside, and nothing read from a file is ever quoted back:
a test file the coordinator cannot use is reported by its name only, with the detail kept in
the coordinator's own log.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from residency.common.config.job import BUILTIN_MODELS
from residency.common.errors import ConfigError, DataError

log = logging.getLogger("residency.coordinator")

_NAMED = (("model", "path"), ("data", "test"))


def _inside(root: Path, written: str) -> Path | None:
    """``written`` resolved under ``root``, or ``None`` if it lands anywhere else."""
    candidate = Path(written)
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()  # follows every symlink, as opening it would
    return resolved if resolved.is_relative_to(root) else None


def confine_job_paths(job: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """The raw job with each file path it names resolved inside ``data_dir``, or refused.

    A relative test path is relative to ``data_dir``; absolute ones must already lie inside
    it. A checkpoint is named by its absolute path, which nodes match against their own
    ``models`` list, so it must be the path itself, not one that resolves there.
    """
    root = data_dir.resolve()
    confined = {
        key: dict(value) if isinstance(value, dict) else value for key, value in job.items()
    }
    for section, field in _NAMED:
        values = confined.get(section)
        if not isinstance(values, dict) or not isinstance(values.get(field), str):
            continue
        written = values[field]
        if section == "model" and written in BUILTIN_MODELS:
            continue
        inside = _inside(root, written)
        if section == "model" and inside is not None and str(inside) != written:
            raise ConfigError(  # nodes compare the path as written with their `models`
                f"job: model.path: {written!r} must be the checkpoint's absolute path in the "
                f"coordinator's data folder, as every node lists it in models; fix: write it "
                f"as {str(inside)!r}"
            )
        if inside is None:
            raise ConfigError(
                f"job: {section}.{field}: {written!r} is not a file in the coordinator's data "
                f"folder; fix: ask the coordinator to place it in {root.name}/ (the `data` "
                "folder of coordinator.toml) and name it relative to that folder"
            )
        values[field] = str(inside)
    return confined


def unquoted(exc: DataError, *, name: str) -> DataError:
    """The launcher's copy of a data error: which file, never what it holds."""
    log.warning("the job's test file cannot be used: %s", exc)
    return DataError(
        f"job: data.test: {name} in the coordinator's data folder cannot be read as a labelled "
        "test file for this job's columns and labels; fix: check the file on the coordinator "
        f"host (the coordinator's log has the detail), or remove [data] test"
    )
