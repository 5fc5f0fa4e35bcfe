#!/usr/bin/env python3
"""CPU self-test of the corpus tools (stdlib unittest, no packages needed):

    python3 tools/corpus/test_corpus_tools.py
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import extract  # noqa: E402
from html2text import html_to_text  # noqa: E402


class Html2Text(unittest.TestCase):
    def test_main_content_and_chrome(self):
        html = """<html><head><title>T</title><script>var x=1;</script></head><body>
        <div class="related" role="navigation"><a href="#">Previous</a></div>
        <div class="body" role="main"><h1>Title<a class="headerlink" href="#t">\u00b6</a></h1>
        <p>First   paragraph
        continues here.</p><ul><li><p>one</p></li><li>two</li></ul>
        <pre>code  line 1
    indented</pre>
        <table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>
        </div><div class="footer">Copyright</div></body></html>"""
        text = html_to_text(html)
        self.assertEqual(text, "Title\n\nFirst paragraph continues here.\n\n- one\n\n- two\n\n"
                               "code  line 1\n    indented\n\na | b\nc | d")

    def test_whole_body_without_main_marker(self):
        self.assertEqual(html_to_text("<body><p>a &amp; b</p><nav>menu</nav><p>c<br>d</p></body>"),
                         "a & b\n\nc\nd")

    def test_nested_pre(self):
        text = html_to_text("<div role=main><pre>x<pre>y</pre>z</pre><p>after</p></div>")
        self.assertEqual(text, "xyz\n\nafter")


class Cleaners(unittest.TestCase):
    def test_gcide(self):
        raw = ("Arrive \\Ar*rive\"\\, v. t.\n   1. To bring to shore. [Obs.]\n      [1913 Webster]\n\n"
               "            And made the sea-trod ship arrive them. --Chapman.\n      [1913 Webster]\n")
        text = extract.clean_gcide(raw)
        self.assertEqual(text.strip(), "Arrive, v. t.\n1. To bring to shore. [Obs.]\n\n"
                                       "And made the sea-trod ship arrive them. --Chapman.")

    def test_brown_detag(self):
        raw = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at ''/'' ,/, it's/pps+bez fine/jj ./.\n"
        self.assertEqual(extract.detag_brown(raw), "The jury said \u201cno\u201d, it's fine.")

    def test_man_cleanup(self):
        page = ("ls(1)" + " " * 50 + "User Commands" + " " * 50 + "ls(1)\n\nNAME\n       ls - list\n\n"
                "   Sub\n       text   here\n\n" + "GNU" + " " * 90 + "2022" + " " * 20 + "ls(1)\n")
        self.assertEqual(extract.clean_man(page), "NAME\nls - list\n\nSub\ntext   here")

    def test_vim_help(self):
        text = extract.clean_vim_help("Intro                *intro*\nSee |:help| and *not a tag*")
        self.assertEqual(text, "Intro\nSee :help and *not a tag*")

    def test_reflow(self):
        para = "a" * 45 + "\n" + "b" * 45 + "\nc"
        self.assertEqual(extract.reflow_filled(para), "a" * 45 + " " + "b" * 45 + " c")
        verse = "short line\nanother one"
        self.assertEqual(extract.reflow_filled(verse), verse)


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


class Dedup(unittest.TestCase):
    def test_documents_and_paragraphs(self):
        boiler = "This paragraph is boilerplate that appears in several files of the corpus, verbatim."
        docs_a = [{"text": "Alpha text that is long enough to stay.\n\n" + boiler, "id": "a1"},
                  {"text": "Alpha text that is long enough to stay.\n\n" + boiler, "id": "a2"}]
        docs_b = [{"text": "Beta document with its own words, the and of.\n\n" + boiler, "id": "b1"},
                  {"text": "tiny", "id": "b2"},
                  {"text": "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20", "id": "b3"}]
        with tempfile.TemporaryDirectory() as d:
            os.makedirs(os.path.join(d, "docs"))
            for name, docs in (("a", docs_a), ("b", docs_b)):
                with open(os.path.join(d, "docs", name + ".jsonl"), "w") as f:
                    for doc in docs:
                        f.write(json.dumps(doc) + "\n")
            subprocess.run([sys.executable, os.path.join(HERE, "dedup.py"), "--docs",
                            os.path.join(d, "docs"), "--out", os.path.join(d, "raw"), "--stats",
                            os.path.join(d, "stats.json"), "a", "b"], check=True,
                           stdout=subprocess.DEVNULL)
            a, b = ([json.loads(x) for x in read(os.path.join(d, "raw", n)).splitlines()]
                    for n in ("00-a.jsonl", "01-b.jsonl"))
            stats = json.loads(read(os.path.join(d, "stats.json")))["sources"]
        self.assertEqual([x["id"] for x in a], ["a1"])
        self.assertIn(boiler, a[0]["text"])
        self.assertEqual(b, [{"text": "Beta document with its own words, the and of.", "id": "b1"}])
        self.assertEqual(stats["a"]["dup_docs"], 1)
        self.assertEqual(stats["b"]["dup_paras"], 1)
        self.assertEqual(stats["b"]["short_docs"], 1)
        self.assertEqual(stats["b"]["nontext_docs"], 1)


if __name__ == "__main__":
    unittest.main()
