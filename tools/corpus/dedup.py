#!/usr/bin/env python3
"""Deduplicates and filters the extracted documents into the final corpus (stdlib only).

    dedup.py --docs DOCS_DIR --out RAW_DIR --stats STATS.json SOURCE...

Reads DOCS_DIR/<source>.jsonl for each SOURCE in the order given (the corpus order: where two
sources share text, the earlier one keeps it) and writes RAW_DIR/<NN>-<source>.jsonl, one
{"text": ..., "id": ...} per line. Steps, per document:

1. exact duplicate documents: the text with whitespace runs collapsed is hashed (BLAKE2b-128);
   a document whose hash was seen before is dropped;
2. duplicate paragraphs: paragraphs are the blank-line separated blocks; one of at least
   PARA_MIN_CHARS characters (whitespace collapsed) that occurred before, anywhere in the corpus,
   is removed (boilerplate: licence notices, navigation, inherited API summaries, the same text
   in two manuals); shorter ones (headings, "Example:", code lines) are kept;
3. filters: documents shorter than MIN_CHARS characters after that, documents whose non-blank
   characters are less than MIN_ALPHA letters (tables of numbers, hex dumps), and documents
   that are not English prose: less than MIN_LATIN of their letters are ASCII letters (another
   script), or at least 100 words of which less than MIN_STOPWORDS are common English function
   words (another language, or a bare list/table such as a list of supported cards).

Statistics per source (documents and bytes in/out, what each step removed) go to STATS.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys

PARA_MIN_CHARS = 80
MIN_CHARS = 32
MIN_ALPHA = 0.40
MIN_LATIN = 0.70
MIN_STOPWORDS = 0.04

_WS = re.compile(r"\s+")
_WORD = re.compile(r"[A-Za-z]+")
STOPWORDS = set("""
a about above after again all also an and any are as at be because been before being between
both but by can could did do does doing down during each few for from further had has have
having he her here hers him his how i if in into is it its itself just more most my no nor not
now of off on once only or other our out over own same she should so some such than that the
their them then there these they this those through to too under until up very was we were what
when where which while who whom why will with would you your
""".split())


def digest(s: str) -> bytes:
    return hashlib.blake2b(s.encode("utf-8"), digest_size=16).digest()


def letters_stats(text: str) -> tuple[float, float]:
    nonblank = sum(1 for c in text if not c.isspace())
    alpha = [c for c in text if c.isalpha()]
    if not nonblank or not alpha:
        return 0.0, 0.0
    ascii_alpha = sum(1 for c in alpha if c < "\x80")
    return len(alpha) / nonblank, ascii_alpha / len(alpha)


def stopword_fraction(text: str) -> tuple[int, float]:
    words = _WORD.findall(text)
    if not words:
        return 0, 0.0
    hits = sum(1 for w in words if w.lower() in STOPWORDS)
    return len(words), hits / len(words)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--stats", required=True)
    ap.add_argument("sources", nargs="+")
    a = ap.parse_args(argv)

    os.makedirs(a.out, exist_ok=True)
    seen_docs: set[bytes] = set()
    seen_paras: set[bytes] = set()
    stats = {"params": {"para_min_chars": PARA_MIN_CHARS, "min_chars": MIN_CHARS,
                        "min_alpha": MIN_ALPHA, "min_latin": MIN_LATIN,
                        "min_stopwords": MIN_STOPWORDS},
             "sources": {}}
    for idx, name in enumerate(a.sources):
        path = os.path.join(a.docs, name + ".jsonl")
        if not os.path.exists(path):
            print(f"dedup: {name}: no extracted documents, skipped", file=sys.stderr)
            continue
        st = dict(docs_in=0, bytes_in=0, dup_docs=0, dup_doc_bytes=0, dup_paras=0,
                  dup_para_bytes=0, short_docs=0, nontext_docs=0, not_prose_docs=0,
                  filtered_bytes=0, docs_out=0, bytes_out=0)
        out_path = os.path.join(a.out, f"{idx:02d}-{name}.jsonl")
        tmp = out_path + ".tmp"
        with open(path, encoding="utf-8") as f, open(tmp, "w", encoding="utf-8") as out:
            for line in f:
                doc = json.loads(line)
                text = doc["text"]
                nbytes = len(text.encode("utf-8"))
                st["docs_in"] += 1
                st["bytes_in"] += nbytes
                key = digest(_WS.sub(" ", text).strip())
                if key in seen_docs:
                    st["dup_docs"] += 1
                    st["dup_doc_bytes"] += nbytes
                    continue
                seen_docs.add(key)
                kept = []
                for para in text.split("\n\n"):
                    norm = _WS.sub(" ", para).strip()
                    if not norm:
                        continue
                    if len(norm) >= PARA_MIN_CHARS:
                        h = digest(norm)
                        if h in seen_paras:
                            st["dup_paras"] += 1
                            st["dup_para_bytes"] += len(para.encode("utf-8")) + 2
                            continue
                        seen_paras.add(h)
                    kept.append(para)
                text = "\n\n".join(kept)
                reason = None
                if len(text) < MIN_CHARS:
                    reason = "short_docs"
                else:
                    alpha, latin = letters_stats(text)
                    nwords, stop = stopword_fraction(text)
                    if alpha < MIN_ALPHA:
                        reason = "nontext_docs"
                    elif latin < MIN_LATIN or (nwords >= 100 and stop < MIN_STOPWORDS):
                        reason = "not_prose_docs"
                if reason:
                    st[reason] += 1
                    st["filtered_bytes"] += len(text.encode("utf-8"))
                    continue
                st["docs_out"] += 1
                st["bytes_out"] += len(text.encode("utf-8"))
                out.write(json.dumps({"text": text, "id": doc.get("id", "")}, ensure_ascii=False) + "\n")
        os.replace(tmp, out_path)
        stats["sources"][name] = st
        print(f"  {name:18s} {st['docs_in']:7d} docs {st['bytes_in'] / 1e6:7.1f} MB -> "
              f"{st['docs_out']:7d} docs {st['bytes_out'] / 1e6:7.1f} MB  (dup docs {st['dup_docs']}, "
              f"dup paragraphs {st['dup_paras']} = {st['dup_para_bytes'] / 1e6:.1f} MB, filtered "
              f"{st['short_docs'] + st['nontext_docs'] + st['not_prose_docs']})", flush=True)
    tot = {k: sum(s[k] for s in stats["sources"].values())
           for k in next(iter(stats["sources"].values()))} if stats["sources"] else {}
    stats["total"] = tot
    with open(a.stats + ".tmp", "w") as f:
        json.dump(stats, f, indent=1)
    os.replace(a.stats + ".tmp", a.stats)
    if tot:
        print(f"  {'total':18s} {tot['docs_in']:7d} docs {tot['bytes_in'] / 1e6:7.1f} MB -> "
              f"{tot['docs_out']:7d} docs {tot['bytes_out'] / 1e6:7.1f} MB")


if __name__ == "__main__":
    main()
