"""Every ```python block of docs/guides/*.md runs as written, in order, one namespace per guide,
in-process: a guide whose example stopped working fails here."""

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
GUIDES = sorted((REPO / "docs" / "guides").glob("*.md"))


def python_blocks(path):
    return re.findall(r"^( *)```python\n(.*?)^\1```$", path.read_text(), flags=re.M | re.S)


def test_there_are_guides_with_examples():
    assert {path.stem for path in GUIDES} >= {"pytorch", "numpy", "pitfalls", "dask", "remote"}
    assert all(python_blocks(path) for path in GUIDES)


@pytest.mark.parametrize("guide", GUIDES, ids=[path.stem for path in GUIDES])
def test_guide_examples_run(guide, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # The guides call `tidepoold` as installed; here, the one this checkout built.
    monkeypatch.setenv("PATH", os.pathsep.join([str(REPO / ".build" / "release"), os.environ.get("PATH", "")]))
    namespace = {"__name__": f"guide_{guide.stem}"}
    for number, (indent, block) in enumerate(python_blocks(guide), 1):
        # Blocks inside list items are indented; the code is the block less that indent.
        code = "\n".join(line[len(indent):] for line in block.splitlines())
        try:
            exec(compile(code, f"{guide.name} block {number}", "exec"), namespace)
        except Exception as error:
            raise AssertionError(f"{guide.name}, python block {number} failed:\n{code}") from error
    import tidepool

    tidepool.set_num_threads(0)
