"""Check the paths a command will write to before it spends minutes measuring.

A report folder that is a file, sits under a file, or cannot be created or written to fails
at once with one line, instead of after the run with a traceback and the results lost.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from lab.errors import ConfigError


def _file_in_the_way(path: Path) -> Path | None:
    for part in (path, *path.parents):
        if part.exists():
            return None if part.is_dir() else part
    return None


def check_output_folder(directory: Path | str, flag: str = "--output") -> Path:
    """Create `directory` if needed and prove it is writable; ConfigError otherwise."""
    path = Path(directory)
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise ConfigError(f"{flag} {path}: {blocker} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot write there: {exc.strerror or exc}") from None
    return path


def check_output_file(file: Path | str, flag: str) -> Path:
    """A file to be written: its folder must exist (or be creatable) and it not be a folder."""
    path = Path(file)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder, give a file name")
    check_output_folder(path.parent, flag)
    return path
