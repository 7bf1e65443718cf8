"""The Python examples of the documentation run as written. Every ```python block of each file in ``DOCUMENTS``
is executed verbatim in a fresh folder that holds tiny stand-ins (``WORKSPACE``) under the names the examples
use: a bundle, a run, images. A block that needs what a test cannot have here (the real pretrained weights, a
GPU, TensorRT) is marked by an HTML comment on the line before its fence, e.g. ``<!-- test: gpu -->``; such a
block is only compiled, so a syntax error still fails.

To cover another markdown file, add it to ``DOCUMENTS``; an example that names a new file or folder gets a
stand-in in ``WORKSPACE``."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import pytest
from conftest import write_patterns
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md",)
# the marks a block may carry (<!-- test: MARK -->): it needs what these tests cannot have, so it is only compiled
COMPILE_ONLY = {
    "slow": "needs the real pretrained weights or minutes of training",
    "gpu": "needs a CUDA GPU",
    "trt": "needs TensorRT and a CUDA GPU",
}
_FENCE = re.compile(r"^```python\s*$")
_MARK = re.compile(r"^<!--\s*test:\s*([\w-]+)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    document: str
    line: int  # of the first line of code (1-based)
    source: str
    mark: str  # "" or a key of COMPILE_ONLY

    @property
    def name(self) -> str:
        return f"{self.document}:{self.line}"


def python_blocks(document: str, root: Path = ROOT) -> List[Block]:
    """The ```python blocks of ``document`` (relative to ``root``), each with the mark on the line before its
    fence, if any."""
    lines = (root / document).read_text(encoding="utf-8").splitlines()
    blocks, index = [], 0
    while index < len(lines):
        if not _FENCE.match(lines[index]):
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].strip() == "```"), None)
        assert end is not None, f"{document}:{index + 1}: the ```python block is never closed"
        mark = _MARK.match(lines[index - 1]) if index else None
        label = mark.group(1) if mark else ""
        assert not label or label in COMPILE_ONLY, f"{document}:{index}: unknown mark {label!r}"
        blocks.append(Block(document, index + 2, "\n".join(lines[index + 1 : end]) + "\n", label))
        index = end + 1
    return blocks


ALL_BLOCKS = [block for document in DOCUMENTS for block in python_blocks(document)]


def _image(path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _images(path: Path) -> None:
    classes = {"cat": 3, "dog": 3}
    write_patterns(path, {"": classes}, 48, np.random.default_rng(0), "{cls}_{i}.jpg")


# name an example uses -> (the session fixture it copies, or None, and how the stand-in is made at that path)
WORKSPACE: Dict[str, Tuple[str, Callable[..., None]]] = {
    "bundles/photos": ("tiny_bundle", lambda path, source: shutil.copytree(source, path)),
    "models/photos": ("tiny_run", lambda path, source: shutil.copytree(source, path)),
    "cat.jpg": ("", lambda path, _: _image(path)),
    "photos/": ("", lambda path, _: _images(path)),
}


def uses(source: str, name: str) -> bool:
    """Whether ``source`` names ``name`` as a path of its own (``photos/`` is not in ``bundles/photos``)."""
    path = re.escape(name.rstrip("/"))
    return re.search(rf"(?<![\w/.-]){path}/?(?![\w.-])", source) is not None


def _prepare(block: Block, folder: Path, request: pytest.FixtureRequest) -> List[str]:
    """The stand-ins of the names ``block`` uses, made in ``folder``; their names."""
    made = []
    for name, (fixture, make) in WORKSPACE.items():
        if not uses(block.source, name):
            continue
        make(folder / name.rstrip("/"), request.getfixturevalue(fixture) if fixture else None)
        made.append(name)
    return made


def test_the_documents_have_python_examples() -> None:
    """Guards the extraction: a changed fence style must not silently leave nothing to test."""
    for document in DOCUMENTS:
        assert python_blocks(document), f"{document} has no ```python block"


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda block: block.name)
def test_python_example_runs_as_written(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    code = compile(block.source, block.name, "exec")  # a syntax error fails every block, marked or not
    if block.mark:
        pytest.skip(f"{block.name} is marked '{block.mark}' ({COMPILE_ONLY[block.mark]}): compiled only")
    _prepare(block, tmp_path, request)
    monkeypatch.chdir(tmp_path)
    exec(code, {"__name__": "__main__"})


def test_marks_and_names_are_read_as_documented(tmp_path: Path) -> None:
    """A mark is read from the line before the fence (an unknown one is refused); a stand-in is made for a name
    only where the example uses that very path."""
    document = tmp_path / "doc.md"
    document.write_text(
        "text\n\n<!-- test: gpu -->\n```python\nimport torch\n```\n\n```python\nx = 1\n```\n", encoding="utf-8"
    )
    marked, plain = python_blocks("doc.md", tmp_path)
    assert (marked.mark, marked.line, marked.source) == ("gpu", 5, "import torch\n")
    assert (plain.mark, plain.line, plain.source) == ("", 9, "x = 1\n")
    document.write_text("<!-- test: someday -->\n```python\nx = 1\n```\n", encoding="utf-8")
    with pytest.raises(AssertionError, match="unknown mark 'someday'"):
        python_blocks("doc.md", tmp_path)
    assert uses('Bundle.load("bundles/photos")', "bundles/photos") and not uses('"bundles/photos"', "photos/")
    assert uses("open('cat.jpg')", "cat.jpg") and not uses("'black_cat.jpg'", "cat.jpg")
