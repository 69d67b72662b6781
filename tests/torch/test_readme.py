"""The README's torch example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(heading):
    text = README.read_text()
    section = text.split(heading, 1)[1]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]


def test_torch_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(python_blocks("## Example (torch + HF T5)"), "README", "exec"), {})
    assert (tmp_path / "out/mov/adapter.safetensors").is_file()
