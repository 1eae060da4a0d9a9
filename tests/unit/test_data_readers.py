"""Reading labelled texts: the three formats agree, and every bad file fails in one clear line."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from residency.common.data.readers import (
    SUPPORTED_SUFFIXES,
    DataScan,
    Unusable,
    read_labeled_texts,
    scan_labeled_texts,
)
from residency.common.data.records import LabeledTexts
from residency.common.errors import DataError

pytestmark = pytest.mark.unit

LABELS = ("Cardiology", "Neurology", "Oncology")
ROWS = (
    ("Brustschmerz, Atemnot.", "Cardiology"),
    ("Kopfschmerz, Schwindel", "Neurology"),
    ('Text with "quotes", commas\nand a line break', "Oncology"),
    ("患者，因咳嗽就诊。", "Cardiology"),
)


def read(path: Path, labels: tuple[str, ...] = LABELS) -> LabeledTexts:
    return read_labeled_texts(path, text_column="text", label_column="label", labels=labels)


def read_error(path: Path, field: str, *phrases: str, labels: tuple[str, ...] = LABELS) -> str:
    """Read ``path`` expecting a DataError; check its shape and return the message."""
    with pytest.raises(DataError) as caught:
        read(path, labels)
    message = str(caught.value)
    assert "\n" not in message
    assert "\r" not in message
    assert message.startswith(f"{path}: {field}: "), message
    assert message.count("; fix: ") == 1, message
    assert message.split("; fix: ")[1].strip(), message
    for phrase in phrases:
        assert phrase in message, message
    return message


def write_csv(path: Path, text: str, *, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def write_jsonl(path: Path, records: list[object]) -> Path:
    lines = [json.dumps(record, ensure_ascii=False) for record in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(
    path: Path, columns: Mapping[str, Sequence[object]], schema: pa.Schema | None = None
) -> Path:
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def csv_text(rows: tuple[tuple[str, str], ...] = ROWS) -> str:
    def quote(value: str) -> str:
        return '"' + value.replace('"', '""') + '"'

    return "text,label\n" + "".join(f"{quote(text)},{label}\n" for text, label in rows)


# --- happy paths ---------------------------------------------------------------------------


def test_csv_jsonl_and_parquet_with_the_same_content_read_identically(tmp_path: Path) -> None:
    from_csv = read(write_csv(tmp_path / "data.csv", csv_text()))
    from_jsonl = read(
        write_jsonl(tmp_path / "data.jsonl", [{"text": t, "label": lab} for t, lab in ROWS])
    )
    from_parquet = read(
        write_parquet(
            tmp_path / "data.parquet",
            {"text": [t for t, _ in ROWS], "label": [lab for _, lab in ROWS]},
        )
    )

    assert from_csv.texts == tuple(text for text, _ in ROWS)
    assert from_csv.labels == (0, 1, 2, 0)
    assert from_csv.label_names == LABELS
    for other in (from_jsonl, from_parquet):
        assert (other.texts, other.labels, other.label_names) == (
            from_csv.texts,
            from_csv.labels,
            from_csv.label_names,
        )
        assert other.fingerprint() == from_csv.fingerprint()
    assert from_parquet.source == tmp_path / "data.parquet"
    assert len(from_csv) == len(ROWS)


def test_csv_accepts_bom_crlf_padded_header_blank_lines_and_extra_columns(tmp_path: Path) -> None:
    content = (
        "\ufefftext, label ,id\r\n\r\nfirst note, Neurology ,1\r\nsecond note,Oncology,2\r\n\r\n"
    )
    records = read(write_csv(tmp_path / "bom.csv", content))

    assert records.texts == ("first note", "second note")
    assert records.labels == (1, 2)


def test_jsonl_accepts_a_utf8_bom(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + '{"text": "é", "label": "Oncology"}\n'.encode())

    assert read(path).texts == ("é",)


def test_label_indices_follow_the_job_order_not_the_file_order(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "order.csv", "text,label\na,Oncology\nb,Cardiology\n")

    assert read(path).labels == (2, 0)
    assert read(path, labels=("Oncology", "Cardiology")).labels == (0, 1)


def test_integer_labels_match_string_label_names(tmp_path: Path) -> None:
    labels = ("0", "1", "2")
    from_jsonl = read(
        write_jsonl(
            tmp_path / "ints.jsonl", [{"text": "a", "label": 2}, {"text": "b", "label": 0}]
        ),
        labels,
    )
    from_parquet = read(
        write_parquet(tmp_path / "ints.parquet", {"text": ["a", "b"], "label": [2, 0]}), labels
    )
    from_csv = read(write_csv(tmp_path / "ints.csv", "text,label\na, 2\nb,0\n"), labels)

    assert from_jsonl.labels == from_parquet.labels == from_csv.labels == (2, 0)
    assert from_jsonl.fingerprint() == from_parquet.fingerprint() == from_csv.fingerprint()


def test_jsonl_skips_blank_lines_and_ignores_other_keys(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_text(
        '\n{"text": "a", "label": "Cardiology", "id": 1}\n   \n{"label": "Oncology", "text": "b"}',
        encoding="utf-8",
    )

    assert read(path).texts == ("a", "b")


def test_suffix_is_matched_case_insensitively(tmp_path: Path) -> None:
    assert read(write_csv(tmp_path / "DATA.CSV", csv_text())).texts[0] == ROWS[0][0]


def test_parquet_with_many_rows_streams_in_batches(tmp_path: Path) -> None:
    count = 10_000
    path = write_parquet(
        tmp_path / "big.parquet",
        {
            "text": [f"note {i}" for i in range(count)],
            "label": [LABELS[i % 3] for i in range(count)],
        },
    )

    records = read(path)
    assert len(records) == count
    assert records.texts[-1] == f"note {count - 1}"
    assert records.labels == tuple(i % 3 for i in range(count))


# --- one line per way a file can be unusable ------------------------------------------------


def _zip_bytes(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("sheet.xml", "<sheet/>")
    return path.read_bytes()


def _parquet_bytes(path: Path) -> bytes:
    return write_parquet(path, {"text": ["a"], "label": ["Cardiology"]}).read_bytes()


Build = Callable[[Path], Path]


def _bytes(name: str, content: bytes | Callable[[Path], bytes]) -> Build:
    def build(folder: Path) -> Path:
        path = folder / name
        data = content(folder / "scratch") if callable(content) else content
        path.write_bytes(data)
        return path

    return build


def _directory(folder: Path) -> Path:
    path = folder / "data.csv"
    path.mkdir()
    return path


def _parquet(
    name: str, columns: Mapping[str, Sequence[object]], schema: pa.Schema | None = None
) -> Build:
    return lambda folder: write_parquet(folder / name, columns, schema)


def _jsonl(records: list[object]) -> Build:
    return lambda folder: write_jsonl(folder / "data.jsonl", records)


STRING_PAIR = pa.schema([("text", pa.string()), ("label", pa.string())])

# (id, how to build the bad file, expected field, phrases the message must contain)
BAD_FILES: list[tuple[str, Build, str, tuple[str, ...]]] = [
    ("missing file", lambda folder: folder / "absent.csv", "file", ("does not exist",)),
    ("directory", _directory, "file", ("is a directory",)),
    (
        "xlsx suffix",
        _bytes("data.xlsx", b"whatever"),
        "file",
        ("unsupported file type '.xlsx'", ".csv, .jsonl, .parquet"),
    ),
    (
        "txt suffix",
        _bytes("data.txt", b"text,label\n"),
        "file",
        ("unsupported file type '.txt'", ".csv, .jsonl, .parquet"),
    ),
    ("no suffix", _bytes("data", b"text,label\n"), "file", ("has no suffix", ".parquet")),
    (
        "parquet renamed to csv",
        _bytes("data.csv", _parquet_bytes),
        "line 1",
        ("not UTF-8 text", "looks like a Parquet file", "rename it to end in .parquet"),
    ),
    (
        "zip renamed to jsonl",
        _bytes("data.jsonl", _zip_bytes),
        "line 1",
        ("not UTF-8 text", "zip archive"),
    ),
    (
        "NUL bytes on line 3",
        _bytes("data.csv", b"text,label\na,Cardiology\nb\x00\x01,Oncology\n"),
        "line 3",
        ("not UTF-8 text", "NUL bytes"),
    ),
    (
        "latin-1 on line 2",
        _bytes("data.csv", "text,label\nMüdigkeit,Neurology\n".encode("latin-1")),
        "line 2",
        ("not UTF-8 text", "0xfc", "save the file with UTF-8 encoding"),
    ),
    (
        "latin-1 in jsonl",
        _bytes(
            "data.jsonl", '{"text": "a", "label": "Oncology"}\n{"text": "é"}\n'.encode("cp1252")
        ),
        "line 2",
        ("not UTF-8 text", "0xe9"),
    ),
    (
        "csv renamed to parquet",
        _bytes("data.parquet", b"text,label\nhello,Cardiology\n"),
        "file",
        ("is not a Parquet file",),
    ),
    ("empty csv", _bytes("data.csv", b""), "file", ("is empty (0 bytes)",)),
    ("empty jsonl", _bytes("data.jsonl", b""), "file", ("is empty (0 bytes)",)),
    ("empty parquet", _bytes("data.parquet", b""), "file", ("is empty (0 bytes)",)),
    (
        "header-only csv",
        _bytes("data.csv", b"text,label\n"),
        "file",
        ("has a header but no data rows",),
    ),
    (
        "csv of blank lines",
        _bytes("data.csv", b"\n  \n\n"),
        "file",
        ("has no header line", "text,label"),
    ),
    ("jsonl of blank lines", _bytes("data.jsonl", b"\n \n\t\n"), "file", ("only blank lines",)),
    (
        "parquet with no rows",
        _parquet("data.parquet", {"text": [], "label": []}, STRING_PAIR),
        "file",
        ("has no rows",),
    ),
    (
        "csv missing text column",
        _bytes("data.csv", b"body,label\nhello,Cardiology\n"),
        "text_column 'text'",
        ("no such column", "'body', 'label'"),
    ),
    (
        "csv missing label column",
        _bytes("data.csv", b"text,class\nhello,Cardiology\n"),
        "label_column 'label'",
        ("no such column", "'text', 'class'"),
    ),
    (
        "csv repeated text column",
        _bytes("data.csv", b"text,label,text\nhello,Cardiology,again\n"),
        "text_column 'text'",
        ("appears 2 times",),
    ),
    (
        "jsonl missing text key",
        _jsonl([{"text": "a", "label": "Oncology"}, {"body": "b", "label": "Oncology"}]),
        "text_column 'text'",
        ("missing from line 2", "'body', 'label'"),
    ),
    (
        "jsonl missing label key",
        _jsonl([{"text": "a", "class": "Oncology"}]),
        "label_column 'label'",
        ("missing from line 1", "'text', 'class'"),
    ),
    (
        "parquet missing text column",
        _parquet("data.parquet", {"note": ["a"], "label": ["Oncology"]}),
        "text_column 'text'",
        ("no such column", "'note', 'label'"),
    ),
    (
        "parquet missing label column",
        _parquet("data.parquet", {"text": ["a"], "specialty": ["Oncology"]}),
        "label_column 'label'",
        ("no such column", "'text', 'specialty'"),
    ),
    (
        "csv unknown label",
        _bytes("data.csv", b"text,label\na,Cardiology\nb,Cardio\n"),
        "line 3",
        ("label 'Cardio' is not one of the job's labels", "'Cardiology', 'Neurology', 'Oncology'"),
    ),
    (
        "jsonl unknown integer label",
        _jsonl([{"text": "a", "label": 7}]),
        "line 1",
        ("label '7' is not one of the job's labels",),
    ),
    (
        "parquet unknown label",
        _parquet("data.parquet", {"text": ["a", "b", "c"], "label": ["Oncology"] * 2 + ["ENT"]}),
        "row 3",
        ("label 'ENT' is not one of the job's labels",),
    ),
    (
        "label differing in case",
        _bytes("data.csv", b"text,label\na,cardiology\n"),
        "line 2",
        ("label 'cardiology' is not one of", "labels are case-sensitive, write 'Cardiology'"),
    ),
    (
        "empty label",
        _bytes("data.csv", b"text,label\na,  \n"),
        "line 2",
        ("label in column 'label' is empty",),
    ),
    (
        "null label",
        _jsonl([{"text": "a", "label": None}]),
        "line 1",
        ("label in column 'label' is null, not a string or integer",),
    ),
    (
        "float label",
        _jsonl([{"text": "a", "label": 1.0}]),
        "line 1",
        ("label in column 'label' is a number, not a string or integer",),
    ),
    (
        "boolean label",
        _jsonl([{"text": "a", "label": True}]),
        "line 1",
        ("label in column 'label' is a boolean",),
    ),
    (
        "empty text",
        _bytes("data.csv", b"text,label\na,Oncology\n,Oncology\n"),
        "line 3",
        ("text in column 'text' is empty",),
    ),
    (
        "blank text",
        _jsonl([{"text": " \t ", "label": "Oncology"}]),
        "line 1",
        ("text in column 'text' is blank (whitespace only)",),
    ),
    (
        "null text in jsonl",
        _jsonl([{"text": None, "label": "Oncology"}]),
        "line 1",
        ("text in column 'text' is null, not a string",),
    ),
    (
        "null text in parquet",
        _parquet("data.parquet", {"text": ["a", None], "label": ["Oncology"] * 2}, STRING_PAIR),
        "row 2",
        ("text in column 'text' is null, not a string",),
    ),
    (
        "number text in jsonl",
        _jsonl([{"text": 42, "label": "Oncology"}]),
        "line 1",
        ("text in column 'text' is a number, not a string",),
    ),
    (
        "list text in jsonl",
        _jsonl([{"text": ["a", "b"], "label": "Oncology"}]),
        "line 1",
        ("text in column 'text' is a list, not a string",),
    ),
    (
        "integer text column in parquet",
        _parquet("data.parquet", {"text": [1, 2], "label": ["Oncology"] * 2}),
        "row 1",
        ("text in column 'text' is a number, not a string",),
    ),
    (
        "jsonl array line",
        _jsonl([{"text": "a", "label": "Oncology"}, ["b", "Oncology"]]),
        "line 2",
        ("is a list in JSON, not an object",),
    ),
    (
        "jsonl string line",
        _jsonl(["just text"]),
        "line 1",
        ("is a string in JSON, not an object", '{"text": "...", "label": "..."}'),
    ),
    (
        "jsonl broken line",
        _bytes("data.jsonl", b'{"text": "a", "label": "Oncology"}\n{"text": "b", "label": \n'),
        "line 2",
        ("is not valid JSON (Expecting value at column 24)",),
    ),
    (
        "csv row with too many fields",
        _bytes("data.csv", b"text,label\nfever, cough,Oncology\n"),
        "line 2",
        ("has 3 fields but the header has 2 columns",),
    ),
    (
        "csv row with too few fields",
        _bytes("data.csv", b"text,label\nfever\n"),
        "line 2",
        ("has 1 field but the header has 2 columns",),
    ),
    (
        "csv field over the csv module's limit",
        _bytes("data.csv", b"text,label\n" + b"x" * 140_000 + b",Oncology\n"),
        "line 2",
        ("is not valid CSV", "field larger than field limit"),
    ),
]


@pytest.mark.parametrize(
    ("build", "field", "phrases"),
    [pytest.param(build, field, phrases, id=case) for case, build, field, phrases in BAD_FILES],
)
def test_bad_file_fails_with_one_line_naming_file_and_field(
    tmp_path: Path, build: Build, field: str, phrases: tuple[str, ...]
) -> None:
    read_error(build(tmp_path), field, *phrases)


def test_line_numbers_count_physical_lines_after_a_multiline_record(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "multi.csv", 'text,label\n"first\nsecond\nthird",Oncology\nok,Unknown\n'
    )

    read_error(path, "line 5", "label 'Unknown'")


def test_nul_byte_beyond_the_sniffed_head_is_still_caught(tmp_path: Path) -> None:
    rows = "".join(f"note {i},Oncology\n" for i in range(2000))
    path = tmp_path / "late.csv"
    path.write_bytes(b"text,label\n" + rows.encode() + b"bad\x00,Oncology\n")

    read_error(path, "line 2002", "not UTF-8 text", "NUL bytes")


def test_long_label_lists_and_long_values_are_cut_short(tmp_path: Path) -> None:
    labels = tuple(f"Specialty {i:02d}" for i in range(30))
    bad_label = "X" * 500
    path = write_csv(tmp_path / "long.csv", f"text,label\nhello,{bad_label}\n")

    message = read_error(
        path, "line 2", "'Specialty 00'", "'Specialty 09'", "and 20 more", labels=labels
    )

    assert "Specialty 10" not in message
    assert bad_label not in message
    assert len(message) < 600


def test_a_label_holding_line_breaks_still_gives_one_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "newline.jsonl", [{"text": "a", "label": "Onco\nlogy\r\nX"}])

    read_error(path, "line 1", "is not one of the job's labels", "\\n")


def test_unreadable_file_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_csv(tmp_path / "locked.csv", csv_text())

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    # Simulated, because chmod cannot lock a file away from root, which CI often runs as.
    monkeypatch.setattr(Path, "open", refuse)
    read_error(path, "file", "cannot be read (PermissionError: Permission denied)", "readable")


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param((), id="empty"),
        pytest.param(("A", "A"), id="duplicate"),
        pytest.param(("A", " B"), id="padded"),
        pytest.param(("A", ""), id="blank"),
    ],
)
def test_an_unusable_job_label_set_is_the_jobs_error_not_the_files(
    tmp_path: Path, labels: tuple[str, ...]
) -> None:
    path = write_csv(tmp_path / "ok.csv", "text,label\na,A\n")

    with pytest.raises(ValueError, match="label") as caught:
        read(path, labels)
    assert not isinstance(caught.value, DataError)


def test_a_bare_string_is_not_a_label_set(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "ok.csv", "text,label\na,A\n")

    with pytest.raises(ValueError, match="sequence"):
        read_labeled_texts(path, text_column="text", label_column="label", labels="AB")


def test_supported_suffixes_are_the_three_documented_formats() -> None:
    assert SUPPORTED_SUFFIXES == (".csv", ".jsonl", ".parquet")


# --- the record value itself -----------------------------------------------------------------


def make(
    texts: tuple[str, ...] = ("a", "b"),
    labels: tuple[int, ...] = (0, 1),
    label_names: tuple[str, ...] = ("X", "Y"),
    source: Path = Path("data.csv"),
) -> LabeledTexts:
    return LabeledTexts(texts=texts, labels=labels, label_names=label_names, source=source)


# SHA-256 of b"residency.labeled-texts.v1\0", then label names, label indices and texts, each
# as a big-endian u64 count followed by u64-length-prefixed UTF-8 strings or u64 indices,
# computed independently with struct.pack. If it changes, fingerprints in old audit logs break.
EXPECTED_FINGERPRINT = "5334f8ee12cac4f6488fbce6231e08e885ad9569338c54b2ebe9a80095925475"


def test_fingerprint_is_a_fixed_content_hash() -> None:
    assert make().fingerprint() == make(source=Path("/elsewhere/other.parquet")).fingerprint()
    assert make().fingerprint() == EXPECTED_FINGERPRINT


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(make(texts=("a", "c")), id="text"),
        pytest.param(make(labels=(1, 1)), id="label"),
        pytest.param(make(label_names=("Y", "X")), id="label order"),
        pytest.param(make(texts=("ab", ""), labels=(0, 1)), id="boundary"),
        pytest.param(make(texts=("a",), labels=(0,)), id="length"),
    ],
)
def test_fingerprint_changes_with_any_content(changed: LabeledTexts) -> None:
    assert changed.fingerprint() != make().fingerprint()


def test_records_are_frozen() -> None:
    records = make()
    with pytest.raises(AttributeError):
        records.texts = ("z",)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        pytest.param({"labels": (0,)}, "2 texts but 1 labels", id="length mismatch"),
        pytest.param({"labels": (0, 2)}, "label index 2", id="index too high"),
        pytest.param({"labels": (-1, 0)}, "label index -1", id="negative index"),
        pytest.param({"label_names": ("X", "X")}, "duplicates", id="duplicate names"),
        pytest.param({"labels": (), "texts": (), "label_names": ()}, "empty", id="no names"),
    ],
)
def test_records_refuse_inconsistent_contents(kwargs: dict[str, object], phrase: str) -> None:
    with pytest.raises(ValueError, match=phrase):
        make(**kwargs)  # type: ignore[arg-type]


# --- a node's scan: unusable records are skipped, only a whole file is an error -------------

RECORD_LEVEL = {
    "NUL bytes on line 3",
    "latin-1 on line 2",
    "latin-1 in jsonl",
    "jsonl missing text key",
    "jsonl missing label key",
    "csv unknown label",
    "jsonl unknown integer label",
    "parquet unknown label",
    "label differing in case",
    "empty label",
    "null label",
    "float label",
    "boolean label",
    "empty text",
    "blank text",
    "null text in jsonl",
    "null text in parquet",
    "number text in jsonl",
    "list text in jsonl",
    "integer text column in parquet",
    "jsonl array line",
    "jsonl string line",
    "jsonl broken line",
    "csv row with too many fields",
    "csv row with too few fields",
    "csv field over the csv module's limit",
}
NO_RECORDS = {"header-only csv", "jsonl of blank lines", "parquet with no rows"}


def scan(path: Path) -> DataScan:
    return scan_labeled_texts(path, text_column="text", label_column="label", labels=LABELS)


@pytest.mark.parametrize(
    ("case", "build"), [pytest.param(case, build, id=case) for case, build, *_ in BAD_FILES]
)
def test_a_scan_skips_an_unusable_record_and_fails_only_on_the_whole_file(
    tmp_path: Path, case: str, build: Build
) -> None:
    path = build(tmp_path)
    with pytest.raises(DataError) as strict:
        read(path)
    if case in RECORD_LEVEL:
        found = scan(path)
        assert found.skipped_count >= 1
        assert found.skipped[0].first == str(strict.value)  # the same line, for the operator
    elif case in NO_RECORDS:
        found = scan(path)
        assert (len(found.records), found.skipped) == (0, ())
    else:
        with pytest.raises(DataError) as whole:
            scan(path)
        assert str(whole.value) == str(strict.value)


CSV_UNUSABLE = [
    b"x,Unknown\n",
    b",Oncology\n",
    b"   ,Oncology\n",
    b"a,b,Oncology\n",
    b"only one field\n",
    "Müdigkeit,Neurology\n".encode("latin-1"),
    b"n\x00l,Oncology\n",
    b"x" * 140_000 + b",Oncology\n",
    b"a,\n",
]
JSONL_UNUSABLE = [
    b'{"text": "a", "label": "Unknown"}\n',
    b'{"text": "", "label": "Oncology"}\n',
    b'{"text": null, "label": "Oncology"}\n',
    b'{"text": "a", "label": 1.5}\n',
    b'{"body": "a", "label": "Oncology"}\n',
    b'{"text": "a"}\n',
    b"not json\n",
    b"[1, 2]\n",
    '{"text": "é", "label": "Oncology"}\n'.encode("cp1252"),
    b'{"text": "a\x00", "label": "Oncology"}\n',
]


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


@pytest.mark.parametrize("position", [0, 2, -1], ids=["first", "middle", "last"])
@pytest.mark.parametrize(
    ("suffix", "unusable"),
    [pytest.param(".csv", line, id=f"csv-{i}") for i, line in enumerate(CSV_UNUSABLE)]
    + [pytest.param(".jsonl", line, id=f"jsonl-{i}") for i, line in enumerate(JSONL_UNUSABLE)],
)
def test_one_unusable_record_anywhere_leaves_the_usable_records_as_they_were(
    tmp_path: Path, suffix: str, unusable: bytes, position: int
) -> None:
    if suffix == ".csv":  # position 2 falls between records, before the multi-line one
        header, *rows = _lines(csv_text().encode())
    else:
        records: list[object] = [{"text": text, "label": label} for text, label in ROWS]
        header, rows = b"", _lines(write_jsonl(tmp_path / "rows.jsonl", records).read_bytes())
    clean = tmp_path / f"clean{suffix}"
    clean.write_bytes(header + b"".join(rows))
    at = len(rows) if position == -1 else position
    dirty = tmp_path / f"dirty{suffix}"
    dirty.write_bytes(header + b"".join(rows[:at]) + unusable + b"".join(rows[at:]))

    before, after = scan(clean), scan(dirty)
    assert before.skipped == ()
    assert after.skipped_count == 1
    assert after.records.texts == before.records.texts
    assert after.records.fingerprint() == before.records.fingerprint()


@pytest.mark.parametrize(
    ("text", "label"),
    [(None, "Oncology"), ("  ", "Oncology"), ("a", "ENT"), ("a", None), ("a", "")],
)
def test_one_unusable_parquet_row_leaves_the_usable_rows_as_they_were(
    tmp_path: Path, text: str | None, label: str | None
) -> None:
    texts, labels = [t for t, _ in ROWS], [lab for _, lab in ROWS]
    clean = write_parquet(tmp_path / "clean.parquet", {"text": texts, "label": labels})
    dirty = write_parquet(
        tmp_path / "dirty.parquet",
        {"text": [*texts[:2], text, *texts[2:]], "label": [*labels[:2], label, *labels[2:]]},
        STRING_PAIR,
    )
    after = scan(dirty)
    assert after.skipped_count == 1
    assert after.skipped[0].places == ("row 3",)
    assert after.records.fingerprint() == scan(clean).records.fingerprint()


def test_a_scan_counts_skipped_records_by_reason_for_the_operator(tmp_path: Path) -> None:
    rows = "".join(f"note {i},{'ENT' if i % 3 == 0 else 'Oncology'}\n" for i in range(20))
    path = write_csv(tmp_path / "d.csv", "text,label\n" + rows + ",Oncology\n")
    found = scan_labeled_texts(
        path, text_column="text", label_column="label", labels=LABELS, label_set="node.toml's"
    )
    assert [(group.reason, group.count) for group in found.skipped] == [
        (Unusable.LABEL_UNKNOWN, 7),
        (Unusable.TEXT_BLANK, 1),
    ]
    assert found.skipped[0].places == ("line 2", "line 5", "line 8", "line 11", "line 14")
    summary = found.summary()
    assert "\n" not in summary
    assert "13 usable records, 8 skipped" in summary
    assert (
        "7 with a label outside the label set (line 2, line 5, line 8, line 11, line 14, ...)"
        in summary
    )
    assert "1 with an empty or blank text (line 22)" in summary
    assert "first: line 2: label 'ENT' is not one of node.toml's" in summary
