"""docs/howto-*.md: each page's one worked example runs as it is written. The examples assert their own point
(conservation, fast path == hook path, both routing paths alike); this only runs them."""
import re
from pathlib import Path

import pytest
from zennit.composites import COMPOSITES

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = ("howto-rule.md", "howto-route.md", "howto-breakdown.md", "howto-composite.md", "howto-video.md")
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every ```python block of a Markdown text, ``line`` the 0-based line its code starts on."""
    return [(text.count("\n", 0, match.start(1)), match.group(1)) for match in BLOCK.finditer(text)]


def test_every_howto_page_is_tested():
    assert sorted(path.name for path in DOCS.glob("howto-*.md")) == sorted(PAGES)


@pytest.fixture
def registry():
    """zennit's composite registry, put back as it was (an example registers a composite of its own)."""
    saved = dict(COMPOSITES)
    yield
    COMPOSITES.clear()
    COMPOSITES.update(saved)


@pytest.mark.parametrize("page", PAGES)
def test_howto_example_runs(page, registry):
    path = DOCS / page
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    assert len(blocks) == 1, f"{page} should have one worked example, has {len(blocks)}"
    line, code = blocks[0]
    # padded to the page's line numbers: a failure (and inspect.getsource on the example's classes) points into the page
    exec(compile("\n" * line + code, str(path), "exec"), {"__name__": f"howto_{path.stem.split('-')[1]}"})
