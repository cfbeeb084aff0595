"""Fails on rendering defects in a built site (run by .ci/run after ``mkdocs build``).

    python .ci/check_site.py site

Checks every HTML page for: Sphinx roles shown literally (``:class:`` ...), ``>>>`` prompts
outside code blocks (a docstring example rendered as a blockquote), visible ``doctest:``
directives, and images whose file is missing.
"""

from __future__ import annotations

import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

ROLE = re.compile(r":(class|meth|func|mod|attr|data|exc|obj):")


class Page(HTMLParser):
    """The page's text outside ``<pre>``/``<code>``, its code text, and its image sources."""

    def __init__(self):
        super().__init__()
        self.depth, self.prose, self.code, self.images = 0, [], [], []

    def handle_starttag(self, tag, attrs):
        if tag in ("pre", "code"):
            self.depth += 1
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("pre", "code") and self.depth:
            self.depth -= 1

    def handle_data(self, data):
        (self.code if self.depth else self.prose).append(data)


def problems(site: Path) -> list[str]:
    found = []
    for page in sorted(site.rglob("*.html")):
        if page.name == "404.html":
            continue
        parser = Page()
        parser.feed(page.read_text(encoding="utf-8"))
        prose, code = "".join(parser.prose), "".join(parser.code)
        where = page.relative_to(site)
        if ROLE.search(prose):
            found.append(f"{where}: a Sphinx role shown literally: {ROLE.search(prose).group(0)}")
        if ">>>" in prose:
            found.append(f"{where}: '>>>' outside a code block (an example rendered as text)")
        if "doctest:" in prose or "# doctest" in code:
            found.append(f"{where}: a doctest directive is visible")
        for src in parser.images:
            url = urlparse(src)
            if url.scheme or not url.path:
                continue
            if not (page.parent / unquote(url.path)).resolve().exists():
                found.append(f"{where}: image {src} does not exist")
    return found


if __name__ == "__main__":
    issues = problems(Path(sys.argv[1] if len(sys.argv) > 1 else "site"))
    print("\n".join(issues) or "site: no rendering defects")
    sys.exit(1 if issues else 0)
