"""Reading a country's labelled texts from CSV, JSONL or Parquet, failing with one-line errors.

The people who run a node are data stewards, not the engineers who wrote the job, and they
cannot send their data to anyone who could debug it for them. So every way a file can be unusable
ends in one ``DataError`` line, ``"{path}: {field}: {problem}; fix: {fix}"``, that says where to
look and what to change, and nothing half-read ever reaches training.

Two readings share one parser. :func:`read_labeled_texts` is for a file whose owner reads the
answer (the coordinator's test set, a simulation's files): the first unusable record is an
error. :func:`scan_labeled_texts` is for a country node in a round: a record that cannot be used
(a label outside the declared set, a blank text, a value of the wrong type, a line that is not
JSON, CSV or UTF-8) is skipped and counted for the operator, because what a round does must not
depend on whether such a record exists. Only a problem of the whole file (missing, unreadable,
another format, a missing column) is still an error there.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
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
        person: The person column's value (person-level DP), or None when none is read.
    """

    where: str
    text: object
    label: object
    person: object = None


class Unusable(StrEnum):
    """Why one record cannot be used; a scan counts skipped records under these names."""

    NOT_UTF8 = "not UTF-8 text"
    NOT_CSV = "not valid CSV"
    FIELD_COUNT = "a wrong number of fields"
    NOT_JSON = "not valid JSON"
    NOT_OBJECT = "not a JSON object"
    MISSING_KEY = "no text or label key"
    TEXT_TYPE = "a text that is not a string"
    TEXT_BLANK = "an empty or blank text"
    LABEL_TYPE = "a label that is not a string or integer"
    LABEL_BLANK = "an empty label"
    LABEL_UNKNOWN = "a label outside the label set"
    PERSON_TYPE = "a person id that is not a string or integer"
    PERSON_BLANK = "an empty person id"


class _RecordError(DataError):
    """One record is unusable; the rest of the file may still be read."""

    def __init__(self, message: str, *, where: str, kind: Unusable) -> None:
        super().__init__(message)
        self.where = where
        self.kind = kind


_SHOWN_PLACES = 5


@dataclass(frozen=True)
class Skipped:
    """The records a scan skipped for one reason.

    Attributes:
        reason: Why they cannot be used.
        count: How many there are.
        places: Where the first few are (``"line 7"``, ``"row 7"``), in file order.
        first: The first one's full one-line message, with its fix.
    """

    reason: Unusable
    count: int
    places: tuple[str, ...]
    first: str


@dataclass(frozen=True)
class DataScan:
    """What a scan found: the usable records, and the skipped ones counted by reason.

    Attributes:
        records: The usable records in file order (possibly none).
        skipped: One entry per reason some records were skipped, in order of first occurrence.
    """

    records: LabeledTexts
    skipped: tuple[Skipped, ...] = field(default=())

    @property
    def skipped_count(self) -> int:
        """How many records were skipped, for every reason together."""
        return sum(group.count for group in self.skipped)

    def summary(self) -> str:
        """One line for the operator: what was skipped, where, and the first case with its fix."""
        source = self.records.source
        usable = _count(len(self.records), "usable record")
        if not self.skipped:
            return f"{source}: {usable}, none skipped"
        groups = "; ".join(
            f"{group.count} with {group.reason.value} ({', '.join(group.places)}"
            + (", ..." if group.count > len(group.places) else "")
            + ")"
            for group in self.skipped
        )
        problem, _, fix = self.skipped[0].first.removeprefix(f"{source}: ").partition("; fix: ")
        return (
            f"{source}: {usable}, {self.skipped_count} skipped: {groups}; "
            f"first: {problem} (to fix: {fix})"
        )


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

    def stop(problem: _RecordError) -> None:
        raise problem

    records = _read(
        path, text_column=text_column, label_column=label_column, labels=labels, unusable=stop
    )
    if not records:
        raise _error(path, "file", _NO_RECORDS[path.suffix.lower()], _NO_RECORDS_FIX)
    return records


def scan_labeled_texts(
    path: Path,
    *,
    text_column: str,
    label_column: str,
    labels: Sequence[str],
    label_set: str = "the job's labels",
    person_column: str | None = None,
) -> DataScan:
    """Read the usable records of one file and count, by reason, the records it skips.

    Every record is read the same way whether or not another record is unusable, so the
    records returned are exactly the file's usable ones: no outcome built on them can tell
    whether an unusable record was there.

    Args:
        path: The data file.
        text_column: Column (CSV, Parquet) or key (JSONL) that holds the text.
        label_column: Column or key that holds the label.
        labels: The label set; its order fixes the label indices.
        label_set: How messages name ``labels`` (whose list the operator should check).
        person_column: Column or key that identifies each record's person (person-level DP);
            a record without a usable person id is skipped like one without a label.

    Returns:
        The usable records (possibly none) and the skipped ones counted by reason.

    Raises:
        DataError: The file as a whole cannot be read with these columns (missing, unreadable,
            another format, a missing column); the message names file, field and fix.
        ValueError: ``labels`` itself is unusable (empty, duplicated, blank or padded names).
    """
    found: dict[Unusable, list[_RecordError]] = {}
    counts: dict[Unusable, int] = {}

    def skip(problem: _RecordError) -> None:
        counts[problem.kind] = counts.get(problem.kind, 0) + 1
        kept = found.setdefault(problem.kind, [])
        if len(kept) < _SHOWN_PLACES:
            kept.append(problem)

    records = _read(
        path,
        text_column=text_column,
        label_column=label_column,
        labels=labels,
        unusable=skip,
        label_set=label_set,
        person_column=person_column,
    )
    skipped = tuple(
        Skipped(
            reason=kind,
            count=counts[kind],
            places=tuple(problem.where for problem in problems),
            first=str(problems[0]),
        )
        for kind, problems in found.items()
    )
    return DataScan(records=records, skipped=skipped)


def _read(
    path: Path,
    *,
    text_column: str,
    label_column: str,
    labels: Sequence[str],
    unusable: Callable[[_RecordError], None],
    label_set: str = "the job's labels",
    person_column: str | None = None,
) -> LabeledTexts:
    """Read every usable record; hand each unusable one to ``unusable`` (which may raise)."""
    label_names = _job_labels(labels)
    label_index = {name: index for index, name in enumerate(label_names)}
    texts: list[str] = []
    indices: list[int] = []
    people: list[str] = []
    columns = _Columns(text_column, label_column, person_column)
    try:
        suffix = _check_file(path)
        with path.open("rb") as handle:
            for record in _RECORD_READERS[suffix](path, handle, columns):
                try:
                    if isinstance(record, _RecordError):
                        raise record
                    text = _text_of(path, record, text_column)
                    label = _label_of(
                        path, record, label_column, label_index, label_names, label_set
                    )
                    person = (
                        None if person_column is None else _person_of(path, record, person_column)
                    )
                except _RecordError as problem:
                    unusable(problem)
                    continue
                texts.append(text)
                indices.append(label)
                if person is not None:
                    people.append(person)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    return LabeledTexts(
        texts=tuple(texts),
        labels=tuple(indices),
        label_names=label_names,
        source=path,
        people=None if person_column is None else tuple(people),
    )


@dataclass(frozen=True)
class _Columns:
    """The columns (JSONL: keys) a reading uses: text, label, and the person's if any."""

    text: str
    label: str
    person: str | None = None

    @property
    def settings(self) -> list[tuple[str, str]]:
        """Each used column with the node.toml setting that names it."""
        named = [("text_column", self.text), ("label_column", self.label)]
        return named + ([] if self.person is None else [("person_column", self.person)])


_NO_RECORDS_FIX = "add records, or point to the right file"


def _unreadable(path: Path, exc: OSError) -> DataError:
    return _error(
        path,
        "file",
        f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})",
        "check that the file is readable by the user running this node",
    )


def count_people(
    path: Path, *, text_column: str, label_column: str, labels: Sequence[str], person_column: str
) -> int:
    """How many people a data file's usable records belong to (at least 1).

    For proposing ``public_people``, as :func:`count_records` is for ``public_records``.
    """
    scan = scan_labeled_texts(
        path,
        text_column=text_column,
        label_column=label_column,
        labels=labels,
        person_column=person_column,
    )
    return max(1, len(set(scan.records.people or ())))


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
            lines = (line for _, line in _text_lines(path, handle, {}))  # bad lines count too
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
        raise _unreadable(path, exc) from exc


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
    path: Path, handle: BinaryIO, columns: _Columns
) -> Iterator[_RawRecord | _RecordError]:
    """Yield CSV records after a header line; lines are numbered as an editor shows them.

    A record that cannot be parsed, or spans a line that is not UTF-8, is yielded as its
    error; the reader goes on from the next line. A bad header line ends the file's reading.
    """
    bad_lines: dict[int, DataError] = {}
    reader = csv.reader(line for _, line in _text_lines(path, handle, bad_lines))
    header: list[str] | None = None
    text_at = label_at = 0
    person_at: int | None = None
    while True:
        start = reader.line_num + 1
        try:
            row: list[str] | None = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            row = None
            problem: DataError | None = _record_error(
                Unusable.NOT_CSV,
                path,
                f"line {start}",
                f"is not valid CSV ({_detail(exc)})",
                "close every opening double quote (an unclosed one runs on to the end of the "
                'file), and double any quote inside a quoted field ("")',
            )
        else:
            problem = None
        undecoded = _take_lines(bad_lines, reader.line_num)
        problem = undecoded or problem
        if header is None and problem is not None:
            raise DataError(str(problem)) from None  # the header line: the file cannot be read
        if problem is not None:
            yield _as_record_error(problem, f"line {start}", Unusable.NOT_UTF8)
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if header is None:
            header = [name.strip() for name in row]
            text_at = _column_index(path, header, "text_column", columns.text)
            label_at = _column_index(path, header, "label_column", columns.label)
            if columns.person is not None:
                person_at = _column_index(path, header, "person_column", columns.person)
            continue
        if len(row) != len(header):
            yield _record_error(
                Unusable.FIELD_COUNT,
                path,
                f"line {start}",
                f"has {_count(len(row), 'field')} but the header has "
                f"{_count(len(header), 'column')}",
                "wrap fields that hold commas in double quotes, and give every row "
                "one field per header column",
            )
            continue
        person = None if person_at is None else row[person_at]
        yield _RawRecord(f"line {start}", row[text_at], row[label_at], person)
    if header is None:
        raise _error(
            path,
            "file",
            "has no header line, only blank lines",
            f"start the file with a header line naming the columns, like "
            f"{','.join(name for _, name in columns.settings)}",
        )


def _take_lines(bad_lines: dict[int, DataError], last: int) -> DataError | None:
    """Remove the bad lines up to ``last`` from ``bad_lines``; return the first one's error."""
    taken = sorted(number for number in bad_lines if number <= last)
    errors = [bad_lines.pop(number) for number in taken]
    return errors[0] if errors else None


def _as_record_error(problem: DataError, where: str, kind: Unusable) -> _RecordError:
    if isinstance(problem, _RecordError):
        return problem
    return _RecordError(str(problem), where=where, kind=kind)


def _jsonl_records(
    path: Path, handle: BinaryIO, columns: _Columns
) -> Iterator[_RawRecord | _RecordError]:
    """Yield one record per non-blank line; a line that is not a JSON object yields its error."""
    example = json.dumps({name: "..." for _, name in columns.settings}, ensure_ascii=False)
    bad_lines: dict[int, DataError] = {}
    for number, line in _text_lines(path, handle, bad_lines):
        where = f"line {number}"
        undecoded = bad_lines.pop(number, None)
        if undecoded is not None:
            yield _as_record_error(undecoded, where, Unusable.NOT_UTF8)
            continue
        if not line.strip():
            continue
        try:
            value = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            yield _record_error(
                Unusable.NOT_JSON,
                path,
                where,
                f"is not valid JSON ({exc.msg} at column {exc.colno})",
                f"write one complete JSON object per line, like {example}",
            )
            continue
        if not isinstance(value, dict):
            yield _record_error(
                Unusable.NOT_OBJECT,
                path,
                where,
                f"is {_kind(value)} in JSON, not an object",
                f"write one JSON object per line, like {example}",
            )
            continue
        missing = [(setting, name) for setting, name in columns.settings if name not in value]
        if missing:
            setting, name = missing[0]
            yield _RecordError(
                _message(
                    path,
                    f"{setting} {name!r}",
                    f"missing from line {number} (keys on that line: {_show_list(value)})",
                    f"set {setting} to the key that holds it, or add {name!r} to every line",
                ),
                where=where,
                kind=Unusable.MISSING_KEY,
            )
            continue
        person = None if columns.person is None else value[columns.person]
        yield _RawRecord(where, value[columns.text], value[columns.label], person)


def _parquet_records(
    path: Path, handle: BinaryIO, columns: _Columns
) -> Iterator[_RawRecord | _RecordError]:
    """Yield Parquet rows batch by batch, reading only the columns the reading uses."""
    try:
        parquet = pq.ParquetFile(handle)
        names = [str(name) for name in parquet.schema_arrow.names]
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _error(
            path,
            "file",
            f"is not a Parquet file ({_detail(exc)})",
            "export the data again as Parquet, or give the file the suffix of its real format",
        ) from exc
    for setting, name in columns.settings:
        _column_index(path, names, setting, name)
    wanted = sorted({name for _, name in columns.settings})
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
        people = values[columns.person] if columns.person is not None else [None] * batch.num_rows
        for text, label, person in zip(
            values[columns.text], values[columns.label], people, strict=True
        ):
            row += 1
            yield _RawRecord(f"row {row}", text, label, person)


_RECORD_READERS: Mapping[
    str, Callable[[Path, BinaryIO, _Columns], Iterator[_RawRecord | _RecordError]]
] = MappingProxyType({".csv": _csv_records, ".jsonl": _jsonl_records, ".parquet": _parquet_records})


def _text_lines(
    path: Path, handle: BinaryIO, bad_lines: dict[int, DataError]
) -> Iterator[tuple[int, str]]:
    """Yield (line number, line) from a UTF-8 file; a line that is not text goes in ``bad_lines``.

    The first few kilobytes are checked before any line is split, so a Parquet file or a zip
    archive renamed to ``.csv`` is refused as such. A line holding a NUL byte or bytes that are
    not UTF-8 is still yielded (decoded with ``surrogateescape``, NUL bytes removed) so that a
    CSV parser keeps its place; its error waits in ``bad_lines`` for the record that spans it.
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
    for number, raw in enumerate(handle, start=1):
        if number == 1 and raw.startswith(_UTF8_BOM):
            raw = raw[len(_UTF8_BOM) :]
        if b"\x00" in raw:
            bad_lines[number] = _binary_line(path, number)
            raw = raw.replace(b"\x00", b"")
        try:
            yield number, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad_lines.setdefault(
                number,
                _record_error(
                    Unusable.NOT_UTF8,
                    path,
                    f"line {number}",
                    f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} "
                    "of the line cannot be decoded)",
                    "save the file with UTF-8 encoding",
                ),
            )
            yield number, raw.decode("utf-8", "surrogateescape")


def _binary_line(path: Path, number: int) -> _RecordError:
    return _record_error(
        Unusable.NOT_UTF8,
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
        raise _record_error(
            Unusable.TEXT_TYPE,
            path,
            record.where,
            f"text in column {text_column!r} is {_kind(value)}, not a string",
            "store every text as a string, or remove the record",
        )
    if not value.strip():
        state = "empty" if not value else "blank (whitespace only)"
        raise _record_error(
            Unusable.TEXT_BLANK,
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
    label_set: str,
) -> int:
    value = record.label
    allowed = _show_list(label_names)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _record_error(
            Unusable.LABEL_TYPE,
            path,
            record.where,
            f"label in column {label_column!r} is {_kind(value)}, not a string or integer",
            f"write one of {label_set} ({allowed}) as a string",
        )
    key = str(value).strip()
    if not key:
        raise _record_error(
            Unusable.LABEL_BLANK,
            path,
            record.where,
            f"label in column {label_column!r} is empty",
            f"fill in one of {label_set} ({allowed}), or remove the record",
        )
    if key in label_index:
        return label_index[key]
    same_but_case = [name for name in label_names if name.casefold() == key.casefold()]
    fix = (
        f"labels are case-sensitive, write {_show(same_but_case[0])}"
        if same_but_case
        else f"correct the label in the file, or add it to {label_set} if it is a new class"
    )
    raise _record_error(
        Unusable.LABEL_UNKNOWN,
        path,
        record.where,
        f"label {_show(key)} is not one of {label_set} ({_show_list(label_names)})",
        fix,
    )


def _person_of(path: Path, record: _RawRecord, person_column: str) -> str:
    """The record's person id as a string (an integer id reads as its digits)."""
    value = record.person
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _record_error(
            Unusable.PERSON_TYPE,
            path,
            record.where,
            f"person id in column {person_column!r} is {_kind(value)}, not a string or integer",
            "give every record the id of the person it is about, or remove the record",
        )
    key = str(value).strip()
    if not key:
        raise _record_error(
            Unusable.PERSON_BLANK,
            path,
            record.where,
            f"person id in column {person_column!r} is empty",
            "fill in the id of the person the record is about, or remove the record",
        )
    return key


def _message(path: Path, field: str, problem: str, fix: str) -> str:
    message = f"{path}: {field}: {problem}; fix: {fix}"
    return message.replace("\r", "\\r").replace("\n", "\\n")


def _error(path: Path, field: str, problem: str, fix: str) -> DataError:
    """Build the one-line DataError every failure of a whole file raises."""
    return DataError(_message(path, field, problem, fix))


def _record_error(kind: Unusable, path: Path, where: str, problem: str, fix: str) -> _RecordError:
    """The one-line error of one unusable record, found at ``where``."""
    return _RecordError(_message(path, where, problem, fix), where=where, kind=kind)


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
