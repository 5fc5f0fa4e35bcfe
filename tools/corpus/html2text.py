"""HTML -> plain text for the corpus (Python standard library only).

Keeps the readable text of a documentation page and drops the rest:

- Only the page's main content is kept when the page marks it (Sphinx's role="main" /
  itemprop="articleBody", DocBook's class="chapter"/"sect1"/..., id="content", <main>, ...);
  otherwise the whole <body>.
- Navigation, headers/footers, sidebars, tables of contents, scripts, styles, forms, "copy"
  buttons and Sphinx's pilcrow header links are skipped (SKIP_TAGS / SKIP_CLASSES / SKIP_IDS).
- Block elements become paragraphs (blank line), <br> a line break, <li> a "- " item, table
  rows a line with cells joined by " | ", <pre> stays verbatim (code keeps its layout).
- Whitespace inside running text is collapsed; entities are decoded by html.parser.

Usage as a tool: python3 html2text.py FILE.html  (prints the text).
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
        "source", "track", "wbr"}
BLOCK = {"address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details",
         "dialog", "dir", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer", "h1",
         "h2", "h3", "h4", "h5", "h6", "header", "hr", "html", "li", "main", "menu", "ol", "p",
         "section", "summary", "table", "tbody", "tfoot", "thead", "tr", "ul"}
SKIP_TAGS = {"script", "style", "noscript", "head", "title", "nav", "button", "form", "select",
             "textarea", "svg", "object", "iframe", "template", "map", "footer", "aside"}
# class names (whole words of the class attribute) whose subtree is navigation or chrome
SKIP_CLASSES = {
    "headerlink", "related", "sphinxsidebar", "sphinxsidebarwrapper", "footer", "header",
    "navheader", "navfooter", "breadcrumb", "breadcrumbs", "wy-breadcrumbs", "toc", "lot",
    "list-of-figures", "list-of-tables", "list-of-examples", "mobile-nav", "menu-wrapper",
    "copybutton", "linenos", "linenodiv", "searchbox", "rst-footer-buttons", "navigation",
    "nav", "navbar", "sidebar", "topnav", "bottomnav", "skip-link", "version_switcher_placeholder",
    "language_switcher_placeholder", "inline-search", "highlight-link", "sourcelink",
    "this-page-menu", "prev-next", "pager", "doc-footer", "sphinxsearch", "rellinks",
    "annotation", "toctree-wrapper", "docnav",
}
SKIP_IDS = {"sidebar", "footer", "header", "navigation", "nav", "toc", "search", "searchbox",
            "breadcrumbs", "topbar", "bottombar", "DisplayArea-search", "navbar", "top", "menu",
            "column-one", "sidebar-wrapper", "bottom_nav", "top_nav", "prevnext", "banner"}
# Elements that hold the main text when present (checked in this order, first match wins).
MAIN_MARKERS = [
    ("attr", "role", "main"),
    ("attr", "itemprop", "articleBody"),
    ("tag", "main", None),
    ("attr", "id", "content"),
    ("attr", "id", "main-content"),
    ("attr", "id", "contents"),
    ("class", "body", None),
    ("class", "document", None),
]
WS = re.compile(r"[ \t\r\n\f\v\u00a0\u200b]+")


class _Parser(HTMLParser):
    def __init__(self, main_markers, skip_classes, skip_ids, keep_hidden=False):
        super().__init__(convert_charrefs=True)
        self.keep_hidden = keep_hidden
        self.main_markers = main_markers
        self.skip_classes = skip_classes
        self.skip_ids = skip_ids
        # stack entries: [tag, skipped, main_rank or None]
        self.stack: list[list] = []
        self.skip = 0            # number of open skipped elements
        self.pre = 0             # number of open <pre>
        self.main_open: list[int] = []  # ranks of open main-marker elements
        # output buffers: one per main rank (text inside it) + "all" (body text)
        self.nmarkers = len(main_markers)
        self.bufs: list[list[str]] = [[] for _ in range(self.nmarkers + 1)]
        self.found = [False] * self.nmarkers
        self.list_stack: list[list] = []  # [kind, counter]
        self.cell_in_row = 0

    # -- output helpers -------------------------------------------------------------------
    def _emit(self, s: str):
        if self.skip:
            return
        self.bufs[self.nmarkers].append(s)
        for r in set(self.main_open):
            self.bufs[r].append(s)

    def _rank(self, tag, attrs):
        cls = attrs.get("class", "") or ""
        classes = cls.split()
        for r, (kind, key, val) in enumerate(self.main_markers):
            if kind == "attr" and attrs.get(key) == val:
                return r
            if kind == "tag" and tag == key:
                return r
            if kind == "class" and key in classes:
                return r
        return None

    def _skipped(self, tag, attrs):
        if tag in SKIP_TAGS:
            return True
        cls = attrs.get("class")
        if cls and any(c in self.skip_classes for c in cls.split()):
            return True
        i = attrs.get("id")
        if i and i in self.skip_ids:
            return True
        if attrs.get("role") in ("navigation", "search", "banner", "contentinfo"):
            return True
        if not self.keep_hidden and (attrs.get("aria-hidden") == "true" or "hidden" in attrs):
            return True
        return False

    # -- parser callbacks -----------------------------------------------------------------
    def handle_starttag(self, tag, attrs_list):
        attrs = {k: (v if v is not None else "") for k, v in attrs_list}
        if tag in VOID:
            if tag == "br":
                self._emit("\n")
            elif tag == "hr":
                self._emit("\n\n")
            elif tag == "img" and not self.skip:
                pass
            return
        skipped = self._skipped(tag, attrs)
        rank = None if skipped else self._rank(tag, attrs)
        self.stack.append([tag, skipped, rank])
        if skipped:
            self.skip += 1
            return
        if rank is not None:
            self.main_open.append(rank)
            self.found[rank] = True
        if tag == "pre":
            self.pre += 1
            if self.pre == 1:  # a <pre> nested in a <pre> adds no second marker
                self._emit("\n\n\x00PRE\x00")
        elif tag in ("ul", "ol", "menu", "dir"):
            self.list_stack.append([tag, 0])
            self._emit("\n\n")
        elif tag == "li":
            if self.list_stack and self.list_stack[-1][0] == "ol":
                self.list_stack[-1][1] += 1
                self._emit("\n\x00LI\x00%d. " % self.list_stack[-1][1])
            else:
                self._emit("\n\x00LI\x00- ")
        elif tag == "tr":
            self.cell_in_row = 0
            self._emit("\n")
        elif tag in ("td", "th"):
            if self.cell_in_row:
                self._emit(" | ")
            self.cell_in_row += 1
        elif tag == "dd":
            self._emit("\n")
        elif tag in BLOCK:
            self._emit("\n\n")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        # pop to the matching open element (tolerates unclosed <p>, <li>, ...)
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                break
        else:
            return
        while len(self.stack) > i:
            t, skipped, rank = self.stack.pop()
            self._close(t, skipped, rank)

    def _close(self, tag, skipped, rank):
        if skipped:
            self.skip -= 1
            return
        if tag == "pre":
            self.pre -= 1
            if self.pre == 0:
                self._emit("\x00/PRE\x00\n\n")
        elif tag in ("ul", "ol", "menu", "dir"):
            if self.list_stack:
                self.list_stack.pop()
            self._emit("\n\n")
        elif tag in ("li", "dd", "dt"):
            self._emit("\n")
        elif tag == "tr":
            pass
        elif tag in BLOCK:
            self._emit("\n\n")
        if rank is not None:
            self.main_open.remove(rank)

    def handle_data(self, data):
        if self.skip:
            return
        data = data.replace("\x00", "")
        if not self.pre:  # source line breaks inside running text are just spaces
            data = data.replace("\r", " ").replace("\n", " ")
        self._emit(data)

    def result(self) -> str:
        for r in range(self.nmarkers):
            if self.found[r]:
                return "".join(self.bufs[r])
        return "".join(self.bufs[self.nmarkers])


_PRE_SPLIT = re.compile(r"\x00PRE\x00(.*?)\x00/PRE\x00", re.S)


def _render(raw: str) -> str:
    """Turns the parser's marked-up stream into text: collapse whitespace outside <pre>."""
    out: list[str] = []
    pos = 0
    for m in _PRE_SPLIT.finditer(raw):
        out.append(_flow(raw[pos:m.start()]))
        code = m.group(1).replace("\x00PRE\x00", "").replace("\x00/PRE\x00", "")
        code = code.replace("\r\n", "\n").expandtabs(8).strip("\n")
        code = "\n".join(line.rstrip() for line in code.split("\n"))
        if code.strip():
            out.append("\n\n" + code + "\n\n")
        pos = m.end()
    out.append(_flow(raw[pos:].replace("\x00PRE\x00", "").replace("\x00/PRE\x00", "")))
    text = "".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def _flow(s: str) -> str:
    s = s.replace("\x00PRE\x00", "").replace("\x00/PRE\x00", "")
    # keep "\n" and "\n\n" structure, collapse all other whitespace
    lines = s.split("\n")
    res = []
    for line in lines:
        line = WS.sub(" ", line).strip()
        res.append(line)
    s = "\n".join(res)
    # a list bullet sticks to the item's first text even when a block (<p>) follows it
    s = re.sub(r"\x00LI\x00(-|\d+\.) ?\s*", lambda m: m.group(1) + " ", s)
    # a line holding only separators (empty table cells) is dropped
    s = re.sub(r"(?m)^(?:\s*\|\s*)+$", "", s)
    s = re.sub(r"(?m)^\| ", "", s)  # a row whose first cell is empty
    return s


def html_to_text(html: str, main_markers=None, skip_classes=None, skip_ids=None,
                 keep_hidden: bool = False) -> str:
    p = _Parser(MAIN_MARKERS if main_markers is None else main_markers,
                SKIP_CLASSES if skip_classes is None else skip_classes,
                SKIP_IDS if skip_ids is None else skip_ids, keep_hidden)
    try:
        p.feed(html)
        p.close()
    except (AssertionError, ValueError):  # badly broken markup: keep what was parsed
        pass
    return _render(p.result())


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8", errors="replace") as f:
            sys.stdout.write(html_to_text(f.read()) + "\n")
