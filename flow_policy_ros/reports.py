"""Machine-readable results: the one JSON writer of the package, and portable data references."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def write_json(path: str | Path | None, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically, creating its directory (no-op when path is None)."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def portable_path(path: str | Path) -> str:
    """A path fit for shipped metadata: no machine-specific prefix.

    Relative paths stay as they are; an absolute path keeps its tail from the last component named
    ``data`` or ``runs`` (``/home/me/ws/data/reach`` -> ``data/reach``), else only its name.
    """
    path = Path(path)
    if not path.is_absolute():
        return path.as_posix()
    parts = path.parts
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] in ("data", "runs"):
            return Path(*parts[i:]).as_posix()
    return path.name


def content_sha256(path: str | Path) -> str:
    """sha256 of a file, or of a directory's files (sorted relative paths and their contents)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
