"""Reading a country's labelled texts from CSV, JSONL or Parquet, failing with one-line errors.

The people who run a node are data stewards, not the engineers who wrote the job, and they
cannot send their data to anyone who could debug it for them. So every way a file can be unusable
ends in one ``DataError`` line, ``"{path}: {field}: {problem}; fix: {fix}"``, that says where to
look and what to change, and nothing half-read ever reaches training.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from residency.common.data.records import LabeledTexts
from residency.common.errors import DataError

SUPPORTED_SUFFIXES: tuple[str, ...] = (".csv", ".jsonl", ".parquet")
"""File suffixes ``read_labeled_texts`` accepts, compared case-insensitively."""

_UTF8_BOM = b"\xef\xbb\xbf"
_SNIFF_BYTES = 8192
_PARQUET_MAGIC = b"PAR1"
_ZIP_MAGIC = b"PK\x03\x04"
_PARQUET_BATCH_ROWS = 4096
_MAX_SHOWN_CHARS = 60
_MAX_SHOWN_ITEMS = 10
_MAX_DETAIL_CHARS = 200

_NO_RECORDS: Mapping[str, str] = MappingProxyType(
    {
        ".csv": "has a header but no data rows",
        ".jsonl": "has no records, only blank lines",
        ".parquet": "has no rows",
    }
)


@dataclass(frozen=True)
class _RawRecord:
    """One record as the file holds it, before its text and label are checked.

    Attributes:
        where: Where a steward finds it: ``"line 7"`` in a text file, ``"row 7"`` in Parquet.
        text: The text column's value, of whatever type the file gave it.
        label: The label column's value, of whatever type the file gave it.
    """

    where: str
    text: object
    label: object


def read_labeled_texts(
    path: Path, *, text_column: str, label_column: str, labels: Sequence[str]
) -> LabeledTexts:
    """Read one file of labelled texts, checking every record against the job's label set.

    The format follows the suffix (``.csv``, ``.jsonl``, ``.parquet``) rather than being sniffed,
    so a steward can tell from the file name how it will be read; a text file that turns out to
    be binary is still caught and named as such. Label values are compared as strings after
    stripping whitespace, so ``3`` in JSONL or an integer Parquet column matches the label "3".

    Args:
        path: The data file.
        text_column: Column (CSV, Parquet) or key (JSONL) that holds the text.
        label_column: Column or key that holds the label.
        labels: The job's label set; its order fixes the label indices.

    Returns:
        The records in file order, with labels as indices into ``labels``.

    Raises:
        DataError: The file cannot be used; the one-line message names the file, the field
            (a column setting, a line, a row, or the file itself) and a fix.
        ValueError: ``labels`` itself is unusable (empty, duplicated, blank or padded names);
            that is the job's mistake, not the file's.
    """
    label_names = _job_labels(labels)
    label_index = {name: index for index, name in enumerate(label_names)}
    texts: list[str] = []
    indices: list[int] = []
    try:
        suffix = _check_file(path)
        with path.open("rb") as handle:
            for record in _RECORD_READERS[suffix](path, handle, text_column, label_column):
                texts.append(_text_of(path, record, text_column))
                indices.append(_label_of(path, record, label_column, label_index, label_names))
    except OSError as exc:
        raise _error(
            path,
            "file",
            f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})",
            "check that the file is readable by the user running this node",
        ) from exc
    if not texts:
        raise _error(path, "file", _NO_RECORDS[suffix], "add records, or point to the right file")
    return LabeledTexts(
        texts=tuple(texts), labels=tuple(indices), label_names=label_names, source=path
    )


def count_records(path: Path) -> int:
    """How many records a data file holds, whatever its columns: for proposing a public size.

    Counts what :func:`read_labeled_texts` would read as records (CSV rows after the header,
    non-blank JSONL lines, Parquet rows); the columns are checked only when a job reads them.
    """
    try:
        suffix = _check_file(path)
        with path.open("rb") as handle:
            if suffix == ".parquet":
                try:
                    return int(pq.ParquetFile(handle).metadata.num_rows)
                except (pa.ArrowException, OSError, ValueError) as exc:
                    raise _error(
                        path,
                        "file",
                        f"is not a Parquet file ({_detail(exc)})",
                        "export the data again as Parquet, or give the file the suffix of its "
                        "real format",
                    ) from exc
            lines = (line for _, line in _text_lines(path, handle))
            if suffix == ".jsonl":
                return sum(1 for line in lines if line.strip())
            try:
                rows = [r for r in csv.reader(lines) if r and (len(r) > 1 or r[0].strip())]
            except csv.Error as exc:
                raise _error(
                    path, "file", f"is not valid CSV ({_detail(exc)})", "fix the CSV syntax"
                ) from exc
            return max(len(rows) - 1, 0)
    except OSError as exc:
        raise _error(
            path,
            "file",
            f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})",
            "check that the file is readable by the user running this node",
        ) from exc


def _job_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """Return the job's labels as a tuple, refusing sets that would make indices ambiguous."""
    if isinstance(labels, str):
        raise ValueError(f"labels must be a sequence of label names, not the string {labels!r}")
    names = tuple(labels)
    if not names:
        raise ValueError("labels is empty; the job needs at least one label")
    for name in names:
        if not isinstance(name, str) or not name or name != name.strip():
            raise ValueError(f"label {name!r} must be a non-empty string without outer spaces")
    if len(set(names)) != len(names):
        raise ValueError(f"labels {list(names)!r} contain duplicates")
    return names


def _check_file(path: Path) -> str:
    """Check the path names a non-empty regular file of a supported type; return its suffix."""
    if not path.exists():
        raise _error(
            path,
            "file",
            "does not exist",
            "check the path (a relative path is resolved from the node's working directory)",
        )
    if path.is_dir():
        raise _error(
            path,
            "file",
            "is a directory, not a data file",
            f"point to one {_or_list(SUPPORTED_SUFFIXES)} file inside it",
        )
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        problem = (
            f"unsupported file type {suffix!r}" if suffix else "has no suffix to tell its format"
        )
        raise _error(
            path,
            "file",
            problem,
            f"save the data as one of {', '.join(SUPPORTED_SUFFIXES)} and use that suffix",
        )
    if not path.is_file():
        raise _error(path, "file", "is not a regular file", "point to a regular data file")
    if path.stat().st_size == 0:
        raise _error(path, "file", "is empty (0 bytes)", "point to the file that holds the data")
    return suffix


def _csv_records(
    path: Path, handle: BinaryIO, text_column: str, label_column: str
) -> Iterator[_RawRecord]:
    """Yield CSV records after a header line; lines are numbered as an editor shows them."""
    reader = csv.reader(line for _, line in _text_lines(path, handle))
    header: list[str] | None = None
    text_at = label_at = 0
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise _error(
                path,
                f"line {start}",
                f"is not valid CSV ({_detail(exc)})",
                "close every opening double quote (an unclosed one runs on to the end of the "
                'file), and double any quote inside a quoted field ("")',
            ) from exc
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if header is None:
            header = [name.strip() for name in row]
            text_at = _column_index(path, header, "text_column", text_column)
            label_at = _column_index(path, header, "label_column", label_column)
            continue
        if len(row) != len(header):
            raise _error(
                path,
                f"line {start}",
                f"has {_count(len(row), 'field')} but the header has "
                f"{_count(len(header), 'column')}",
                "wrap fields that hold commas in double quotes, and give every row "
                "one field per header column",
            )
        yield _RawRecord(f"line {start}", row[text_at], row[label_at])
    if header is None:
        raise _error(
            path,
            "file",
            "has no header line, only blank lines",
            f"start the file with a header line naming the columns, like {text_column},"
            f"{label_column}",
        )


def _jsonl_records(
    path: Path, handle: BinaryIO, text_column: str, label_column: str
) -> Iterator[_RawRecord]:
    """Yield one record per non-blank line, each of which must be a JSON object."""
    example = json.dumps({text_column: "...", label_column: "..."}, ensure_ascii=False)
    for number, line in _text_lines(path, handle):
        if not line.strip():
            continue
        try:
            value = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            raise _error(
                path,
                f"line {number}",
                f"is not valid JSON ({exc.msg} at column {exc.colno})",
                f"write one complete JSON object per line, like {example}",
            ) from exc
        if not isinstance(value, dict):
            raise _error(
                path,
                f"line {number}",
                f"is {_kind(value)} in JSON, not an object",
                f"write one JSON object per line, like {example}",
            )
        for setting, name in (("text_column", text_column), ("label_column", label_column)):
            if name not in value:
                raise _error(
                    path,
                    f"{setting} {name!r}",
                    f"missing from line {number} (keys on that line: {_show_list(value)})",
                    f"set {setting} to the key that holds it, or add {name!r} to every line",
                )
        yield _RawRecord(f"line {number}", value[text_column], value[label_column])


def _parquet_records(
    path: Path, handle: BinaryIO, text_column: str, label_column: str
) -> Iterator[_RawRecord]:
    """Yield Parquet rows batch by batch, reading only the two columns the job uses."""
    try:
        parquet = pq.ParquetFile(handle)
        columns = [str(name) for name in parquet.schema_arrow.names]
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _error(
            path,
            "file",
            f"is not a Parquet file ({_detail(exc)})",
            "export the data again as Parquet, or give the file the suffix of its real format",
        ) from exc
    _column_index(path, columns, "text_column", text_column)
    _column_index(path, columns, "label_column", label_column)
    wanted = sorted({text_column, label_column})
    row = 0
    batches = parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=wanted)
    while True:
        try:
            batch = next(batches, None)
            if batch is None:
                return
            values = batch.to_pydict()
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise _error(
                path,
                f"row {row + 1}",
                f"cannot be read as Parquet ({_detail(exc)})",
                "export the data again; the file looks damaged",
            ) from exc
        for text, label in zip(values[text_column], values[label_column], strict=True):
            row += 1
            yield _RawRecord(f"row {row}", text, label)


_RECORD_READERS: Mapping[str, Callable[[Path, BinaryIO, str, str], Iterator[_RawRecord]]] = (
    MappingProxyType({".csv": _csv_records, ".jsonl": _jsonl_records, ".parquet": _parquet_records})
)


def _text_lines(path: Path, handle: BinaryIO) -> Iterator[tuple[int, str]]:
    """Yield (line number, line) from a UTF-8 file, refusing binary content by line.

    The first few kilobytes are checked before any line is split, so a large binary file
    renamed to ``.csv`` is refused without reading it all in as one enormous "line".
    """
    head = handle.read(_SNIFF_BYTES)
    handle.seek(0)
    if head.startswith(_PARQUET_MAGIC):
        raise _error(
            path,
            "line 1",
            "not UTF-8 text (it looks like a Parquet file)",
            "rename it to end in .parquet",
        )
    if head.startswith(_ZIP_MAGIC):
        raise _error(
            path,
            "line 1",
            "not UTF-8 text (it looks like a zip archive, such as an .xlsx workbook)",
            f"export the data as UTF-8 {_or_list(SUPPORTED_SUFFIXES)}",
        )
    nul = head.find(b"\x00")
    if nul >= 0:
        raise _binary_line(path, head.count(b"\n", 0, nul) + 1)
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(_UTF8_BOM):
            raw = raw[len(_UTF8_BOM) :]
        if b"\x00" in raw:
            raise _binary_line(path, number)
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _error(
                path,
                f"line {number}",
                f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} "
                "of the line cannot be decoded)",
                "save the file with UTF-8 encoding",
            ) from exc


def _binary_line(path: Path, number: int) -> DataError:
    return _error(
        path,
        f"line {number}",
        "not UTF-8 text (it contains NUL bytes, so it is probably a binary file)",
        f"export the data as UTF-8 {_or_list(SUPPORTED_SUFFIXES)}, "
        "or give a Parquet file the .parquet suffix",
    )


def _column_index(path: Path, columns: Sequence[str], setting: str, name: str) -> int:
    """Return where ``name`` is among ``columns``; a missing or repeated column is an error."""
    matches = [index for index, column in enumerate(columns) if column == name]
    if not matches:
        raise _error(
            path,
            f"{setting} {name!r}",
            f"no such column (available columns: {_show_list(columns)})",
            f"set {setting} to one of the available columns, or rename the column in the file",
        )
    if len(matches) > 1:
        raise _error(
            path,
            f"{setting} {name!r}",
            f"the column appears {len(matches)} times",
            "give every column a distinct name",
        )
    return matches[0]


def _text_of(path: Path, record: _RawRecord, text_column: str) -> str:
    value = record.text
    if not isinstance(value, str):
        raise _error(
            path,
            record.where,
            f"text in column {text_column!r} is {_kind(value)}, not a string",
            "store every text as a string, or remove the record",
        )
    if not value.strip():
        state = "empty" if not value else "blank (whitespace only)"
        raise _error(
            path,
            record.where,
            f"text in column {text_column!r} is {state}",
            "fill in the text, or remove the record",
        )
    return value


def _label_of(
    path: Path,
    record: _RawRecord,
    label_column: str,
    label_index: Mapping[str, int],
    label_names: tuple[str, ...],
) -> int:
    value = record.label
    allowed = _show_list(label_names)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _error(
            path,
            record.where,
            f"label in column {label_column!r} is {_kind(value)}, not a string or integer",
            f"write one of the job's labels ({allowed}) as a string",
        )
    key = str(value).strip()
    if not key:
        raise _error(
            path,
            record.where,
            f"label in column {label_column!r} is empty",
            f"fill in one of the job's labels ({allowed}), or remove the record",
        )
    if key in label_index:
        return label_index[key]
    same_but_case = [name for name in label_names if name.casefold() == key.casefold()]
    fix = (
        f"labels are case-sensitive, write {_show(same_but_case[0])}"
        if same_but_case
        else "correct the label in the file, or add it to the job's labels if it is a new class"
    )
    raise _error(
        path,
        record.where,
        f"label {_show(key)} is not one of the job's labels ({_show_list(label_names)})",
        fix,
    )


def _error(path: Path, field: str, problem: str, fix: str) -> DataError:
    """Build the one-line DataError every failure in this module raises."""
    message = f"{path}: {field}: {problem}; fix: {fix}"
    return DataError(message.replace("\r", "\\r").replace("\n", "\\n"))


def _show(value: str) -> str:
    """Quote a value taken from the file, cut short so one bad cell cannot flood the message."""
    if len(value) > _MAX_SHOWN_CHARS:
        value = value[: _MAX_SHOWN_CHARS - 3] + "..."
    return repr(value)


def _show_list(values: Iterable[str]) -> str:
    items = [str(value) for value in values]
    shown = ", ".join(_show(item) for item in items[:_MAX_SHOWN_ITEMS])
    hidden = len(items) - _MAX_SHOWN_ITEMS
    if hidden > 0:
        shown += f", ... and {hidden} more"
    return shown or "none"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _or_list(values: Sequence[str]) -> str:
    return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]


def _detail(exc: BaseException) -> str:
    """The first line of an exception's message, short enough to sit inside ours."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    if len(first) > _MAX_DETAIL_CHARS:
        first = first[: _MAX_DETAIL_CHARS - 3] + "..."
    return first


def _kind(value: object) -> str:
    """Name a value's type in words a steward knows from JSON and spreadsheets."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
