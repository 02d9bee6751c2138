"""The run directory: the one thing stages hand to each other.

`run.json` records the configuration, package versions, teacher, device and each stage's status
(`pending`, `running`, `done`) with a fingerprint of the stage's inputs. A stage skips itself when
it is `done` with the same fingerprint; a `running` status left by a kill means "resume".
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from . import atomic
from .errors import UserError
from .runfiles import FIXED_SCORES, MANIFEST  # noqa: F401  (re-exported)

STAGES = ("teacher", "distill", "score", "profile", "search", "build")


def fingerprint(obj: Any) -> str:
    """Stable short hash of JSON-able data (dict key order does not matter)."""
    text = json.dumps(obj, sort_keys=True, default=atomic._jsonable, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_hash(path: Path) -> str:
    """Short hash of a file's bytes; "" when there is no such file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else ""


def without_defaults(settings: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """`settings` less the options that sit at the given defaults: options added after runs were
    saved are left out of a fingerprint until set, so those runs' fingerprints stay valid."""
    return {k: v for k, v in settings.items() if not (k in defaults and v == defaults[k])}


def stage_fingerprint(settings: dict[str, Any], upstream: dict[str, str] | None = None,
                      files: dict[str, Path] | None = None) -> str:
    """What a stage's `done` is valid for: its settings (config sections or values, by name), the
    fingerprints of the stages it reads (by stage name) and the bytes of the files it reads (under
    "inputs", by file name), in one flat JSON object: the object saved runs' fingerprints hash
    (pinned in tests/test_fingerprints.py)."""
    obj = dict(settings)
    for name, fp in (upstream or {}).items():
        if name in obj:
            raise ValueError(f"'{name}' is both a setting and an upstream stage")
        obj[name] = fp
    if files is not None:
        obj["inputs"] = {name: file_hash(p) for name, p in files.items()}
    return fingerprint(obj)


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("hant-trt", "torch", "torchvision", "timm", "onnx", "onnxruntime", "pulp",
                 "polygraphy", "tensorrt"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def _manifest_problem(m: Any) -> str | None:
    """What makes a parsed run.json unusable, or None (checked on every read, so a hand-edited
    manifest fails with its fault named rather than deep inside a stage)."""
    if not isinstance(m, dict):
        return f"it holds a {type(m).__name__}, not an object"
    for key in ("config", "teacher", "stages"):
        if key in m and not isinstance(m[key], dict):
            return f"'{key}' is a {type(m[key]).__name__}, not an object"
    known = set(StageStatus.__dataclass_fields__)
    for name, st in m.get("stages", {}).items():
        if not isinstance(st, dict):
            return f"stage '{name}' is a {type(st).__name__}, not an object"
        if set(st) - known:
            return f"stage '{name}' has unknown field(s) {', '.join(sorted(set(st) - known))}"
        if st.get("status", "pending") not in ("pending", "running", "done"):
            return f"stage '{name}' has status {st.get('status')!r} (pending, running or done)"
        if st.get("info") is not None and not isinstance(st["info"], dict):
            return f"stage '{name}' info is a {type(st['info']).__name__}, not an object"
    return None


@dataclass
class StageStatus:
    status: str = "pending"
    fingerprint: str = ""
    started: float | None = None
    finished: float | None = None
    info: dict | None = None


class RunDir:
    """A run directory and its manifest. Safe for several processes (ranks) at once."""

    def __init__(self, path: str | Path, create: bool = True):
        self.root = Path(path)
        if not self.root.exists():
            if not create:
                raise UserError(f"run directory {self.root} does not exist")
            atomic.check_output_dir(self.root, "run directory")
            with atomic.user_paths(self.root, "cannot create run directory"):
                self.root.mkdir(parents=True, exist_ok=True)   # ranks of one torchrun race here
        elif not self.root.is_dir():
            raise UserError(f"run directory {self.root} is not a directory")
        mpath = self.root / MANIFEST
        if not mpath.exists():
            if not create:
                raise UserError(f"{self.root} is not a run directory (no {MANIFEST})")
            atomic.check_output_dir(self.root, "run directory")
            with self._locked():
                if not mpath.exists():
                    atomic.write_json(mpath, {
                        "format": 1,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        "packages": package_versions(),
                        "config": {},
                        "teacher": {},
                        "stages": {},
                    })
        self.manifest()  # fail early on a corrupt manifest

    # -- paths -----------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    # -- manifest --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with atomic.user_paths(self.root / ".lock", "cannot write to the run directory:"):
            fh = open(self.root / ".lock", "a+")
        with fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def manifest(self) -> dict:
        path = self.root / MANIFEST
        try:
            m = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"{path} is unreadable or corrupt ({exc})") from None
        problem = _manifest_problem(m)
        if problem:
            raise UserError(f"{path} is corrupt: {problem}; fix it or start a new run directory")
        return m

    def update(self, **fields: Any) -> dict:
        """Merge top-level fields into the manifest under the lock."""
        with self._locked():
            m = self.manifest()
            m.update(fields)
            atomic.write_json(self.root / MANIFEST, m)
            return m

    def stage(self, name: str) -> StageStatus:
        raw = self.manifest().get("stages", {}).get(name)
        return StageStatus(**raw) if raw else StageStatus()

    def is_done(self, name: str, fp: str) -> bool:
        st = self.stage(name)
        return st.status == "done" and st.fingerprint == fp

    def set_stage(self, name: str, status: str, fp: str, info: dict | None = None) -> None:
        with self._locked():
            m = self.manifest()
            st = m.setdefault("stages", {}).get(name) or {}
            now = time.time()
            if status == "running" and st.get("status") != "running":
                st["started"] = now
            if status == "done":
                st["finished"] = now
            st.update(status=status, fingerprint=fp)
            if info is not None:
                st["info"] = info
            m["stages"][name] = st
            atomic.write_json(self.root / MANIFEST, m)

    def invalidate_from(self, name: str) -> None:
        """Mark `name` and every later stage pending (for `run --from STAGE`)."""
        with self._locked():
            m = self.manifest()
            for s in STAGES[STAGES.index(name):]:
                if s in m.get("stages", {}):
                    m["stages"][s]["status"] = "pending"
            atomic.write_json(self.root / MANIFEST, m)

    def require(self, name: str) -> dict:
        """The stage's manifest entry; a user error if it has not finished."""
        st = self.stage(name)
        if st.status != "done":
            raise UserError(f"stage '{name}' has not finished in {self.root}: run `hant-trt {name}` first")
        return st.info or {}
