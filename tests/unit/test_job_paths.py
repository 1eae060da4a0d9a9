"""A launched job opens files only inside the coordinator's data folder, and quotes none."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from residency.common.errors import ConfigError, DataError
from residency.server.job_paths import confine_job_paths, unquoted

pytestmark = pytest.mark.unit

SECRET = "root:x:0:0:root:/root:/bin/bash"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "coordinator" / "data"
    folder.mkdir(parents=True)
    (folder / "test.csv").write_text("text,label\nfine,pos\n", "utf-8")
    (tmp_path / "passwd").write_text(SECRET + "\n", "utf-8")
    (folder / "innocent.csv").symlink_to(tmp_path / "passwd")
    (folder / "nested").mkdir()
    (folder / "nested" / "up.csv").symlink_to("../test.csv")  # stays inside: fine
    return folder


def _job(test: str, model: str = "tiny") -> dict[str, object]:
    return {"model": {"path": model}, "data": {"labels": ["a", "b"], "test": test}}


def test_relative_and_absolute_paths_inside_the_folder_resolve_there(data: Path) -> None:
    for written in ("test.csv", str(data / "test.csv"), "nested/up.csv"):
        confined = confine_job_paths(_job(written), data)
        assert confined["data"] == {"labels": ["a", "b"], "test": str(data.resolve() / "test.csv")}
    assert confine_job_paths(_job("test.csv"), data)["model"] == {"path": "tiny"}


@pytest.mark.parametrize(
    "written", ["innocent.csv", "/etc/passwd", "../../passwd", "missing.csv/../../../passwd"]
)
def test_paths_leading_out_of_the_folder_are_refused_without_a_byte_of_the_file(
    data: Path, written: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        confine_job_paths(_job(written), data)

    message = str(refused.value)
    assert message.startswith(f"job: data.test: {written!r} is not a file in the coordinator's")
    assert "fix: ask the coordinator to place it in data/" in message
    assert "root:" not in message
    assert "\n" not in message


def test_a_checkpoint_outside_the_folder_is_refused(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"job: model\.path: "):
        confine_job_paths(_job("test.csv", model=str(tmp_path)), data)


def test_a_data_error_is_named_never_quoted() -> None:
    detail = DataError(f"/srv/data/test.csv: row 2: label {SECRET!r} is not one of ('a', 'b')")

    message = str(unquoted(detail, name="test.csv"))

    assert SECRET not in message
    assert "root" not in message
    assert message.startswith("job: data.test: test.csv in the coordinator's data folder")
    json.dumps(message)  # one plain line


def test_a_checkpoint_is_named_by_the_absolute_path_nodes_list(data: Path) -> None:
    checkpoint = data / "bert"
    checkpoint.mkdir()
    exact = str(checkpoint.resolve())

    assert confine_job_paths(_job("test.csv", model=exact), data)["model"] == {"path": exact}
    with pytest.raises(ConfigError, match=f"fix: write it as {exact!r}"):
        confine_job_paths(_job("test.csv", model="bert"), data)
