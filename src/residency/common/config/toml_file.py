"""Write a config model back as TOML, atomically, and check that it reads back the same."""

from __future__ import annotations

from pathlib import Path

import tomli_w
from pydantic import BaseModel

from residency.common.config.loading import load_model
from residency.common.files import write_atomic


def write_model(path: Path, model: BaseModel, *, header: str = "") -> Path:
    """Write ``model`` as TOML (``header`` becomes leading comment lines)."""
    comments = "".join(f"# {line}\n".replace("# \n", "#\n") for line in header.splitlines())
    text = comments + tomli_w.dumps(model.model_dump(mode="json", exclude_none=True))
    write_atomic(path, text)
    load_model(path, type(model), context={"base_dir": path.resolve().parent})
    return path
