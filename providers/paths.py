"""Resolve user-supplied paths safely inside a root directory."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from contextlab.providers.base import ProviderError


def resolve_in_root(root: Path, relative: str, *, allow_hidden: bool = False) -> Path:
    """Return `root / relative`, refusing anything that would leave `root`.

    Absolute paths, `..` segments that climb out, and symlinks pointing outside the root are
    all refused with a message that says what to send instead.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise ProviderError("Empty path: give a path relative to the server root, e.g. 'analysis.ipynb'.")
    if "\x00" in relative:
        raise ProviderError("Invalid path: it contains a NUL byte.")
    posix = PurePosixPath(relative.replace("\\", "/"))
    if posix.is_absolute() or Path(relative).is_absolute():
        raise ProviderError(f"Absolute paths are not allowed ({relative!r}): give a path relative to the server root.")
    if not allow_hidden and any(part.startswith(".") and part not in (".", "..") for part in posix.parts):
        raise ProviderError(f"Hidden files and folders are not served ({relative!r}).")
    root_resolved = root.resolve()
    candidate = (root_resolved / posix).resolve()
    if not candidate.is_relative_to(root_resolved):
        raise ProviderError(
            f"Path {relative!r} resolves outside the server root (through '..' or a symlink); "
            "only files under the root can be read."
        )
    return candidate


def relative_posix(root: Path, path: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()
