"""Static checks of the whole tree: unused imports and names, undefined names, redefinitions
(pyflakes). A line marked `# noqa` is an intended exception (a re-export, an import that registers
something or checks availability)."""

from pathlib import Path

import pyflakes.api
import pyflakes.reporter

ROOT = Path(__file__).resolve().parents[1]


class _Collect(pyflakes.reporter.Reporter):
    def __init__(self):
        self.found = []

    def unexpectedError(self, filename, msg):
        self.found.append(f"{filename}: {msg}")

    def syntaxError(self, filename, msg, lineno, offset, text):
        self.found.append(f"{filename}:{lineno}: {msg}")

    def flake(self, message):
        line = Path(message.filename).read_text().splitlines()[message.lineno - 1]
        if "noqa" not in line:
            self.found.append(str(message))


def test_no_unused_or_undefined_names():
    rep = _Collect()
    for folder in ("hant_trt", "benchmarks", "tools", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            pyflakes.api.checkPath(str(path), rep)
    assert not rep.found, "\n".join(rep.found)
