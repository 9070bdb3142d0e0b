"""The README's Python example runs as written and its commented shapes are true."""

import re

import torch

from test_cli_lightning import ROOT


def test_the_readme_python_example_runs_as_written():
    text = (ROOT / "README.md").read_text()
    section = text.split("## The model, in Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (our own README)
    for line in code.splitlines():  # `expr   # (2, 512, 8192)`: the shape the comment promises
        shown = re.match(r"^(\S+)\s+# (\([\d, ]+\))", line)
        if shown:
            assert tuple(eval(shown.group(1), namespace)) == eval(shown.group(2))  # noqa: S307
    assert namespace["text"].shape == (1, 23)
