"""Round stages shared between runs (``cache_dir``).

Runs that start a round from the same policy sample and judge the same thing: an epsilon sweep, the follower's spaces
and backends, and plain iterative DPO all start round 1 from one round 0. With a shared ``cache_dir`` the first of them
to reach a stage computes it and the others copy its files. An entry is keyed by the content of every model file the
stage reads (the policy's checkpoint, the base model, a judge's own model files and the file defining its class), its
inputs (prompts, responses, held-out pairs) and every setting it depends on, so a changed setting, a retrained
checkpoint or an edited judge misses instead of reusing a stale answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sgpo.pipeline import files

# bumped when what a stage writes changes, so entries from an older sgpo are not reused
FORMAT = 1

_seen: dict[tuple[str, int, int], str] = {}
_REMEMBERED = 1 << 20


def _file_digest(path: Path) -> str:
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo in _seen:
        return _seen[memo]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    # only large files are remembered: a small one rewritten within the clock tick of its mtime keeps its size and
    # mtime, and it costs nothing to read again
    if stat.st_size >= _REMEMBERED:
        _seen[memo] = digest.hexdigest()
    return digest.hexdigest()


def fingerprint(path: str | os.PathLike[str]) -> str:
    """A digest of a file's bytes, or of every file under a directory (relative names and bytes): equal digests mean
    the same model files wherever they lie. Files of 1 MiB or more are hashed once per process while their size and
    mtime hold."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: nothing to fingerprint")
    if path.is_file():
        return _file_digest(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{f.relative_to(path).as_posix()}\0{_file_digest(f)}\n".encode())
    return digest.hexdigest()


def key(stage: str, **parts: Any) -> str:
    """The entry name for ``stage`` with inputs ``parts`` (any JSON-serialisable values)."""
    import torch

    import sgpo

    payload = {"stage": stage, "format": FORMAT, "sgpo": sgpo.__version__, "torch": torch.__version__, **parts}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return f"{stage}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def judge_identity(name: str, options: dict[str, Any], option: str = "judge.name") -> dict[str, Any]:
    """What a judge's answers depend on besides its inputs: its name and options, the file its class is defined in,
    and the content of every file or directory an option names (a reward model's weights, a rubric's data)."""
    import inspect

    from sgpo.pipeline.judges import judge_class

    source = inspect.getsourcefile(judge_class(name, option))
    named = {
        key: fingerprint(value)
        for key, value in sorted(options.items())
        if isinstance(value, str) and value and Path(value).expanduser().exists()
    }
    return {
        "name": name,
        "options": dict(options),
        "code": fingerprint(source) if source else None,
        "files": named,
    }


class StageCache:
    """Stage outputs under ``root/<key>/``; ``root=None`` turns the cache off (every lookup misses)."""

    def __init__(self, root: str | os.PathLike[str] | None) -> None:
        self.root = Path(root) if root is not None else None

    def fetch(self, entry: str, into: Path, names: Sequence[str]) -> bool:
        """Copy ``names`` of ``entry`` into ``into`` in order, each atomically; False (nothing copied) on a miss.

        The last name should be the stage's output file, whose presence marks the stage done in a run directory."""
        if self.root is None:
            return False
        source = self.root / entry
        if not all((source / name).is_file() for name in names):
            return False
        for name in names:
            with files.atomic_path(into / name) as tmp:
                shutil.copyfile(source / name, tmp)
        return True

    def store(self, entry: str, source: Path, names: Sequence[str]) -> None:
        """Keep ``names`` from ``source`` as ``entry``; an entry another run stored first is left as it is."""
        if self.root is None or (self.root / entry).is_dir():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{entry}.", dir=self.root))
        os.chmod(staging, 0o777 & ~files.umask())
        try:
            for name in names:
                shutil.copyfile(source / name, staging / name)
            try:
                # a rename never replaces a non-empty directory: a run reading an entry is never left without it
                os.rename(staging, self.root / entry)
            except OSError:
                if not (self.root / entry).is_dir():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
