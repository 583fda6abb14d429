"""How far the code a user ran is from the code the Copilot suggested."""

from __future__ import annotations

import difflib
import re

MARKER = re.compile(r"^\s*(?:#|--|<!--)\s*copilot:([0-9a-f]{8,32})\s*(?:-->)?\s*$", re.MULTILINE)
MAX_LEVENSHTEIN_CELLS = 4_000_000  # len(a) * len(b): beyond this the character count is skipped


def find_marker(cell: str) -> str | None:
    """The suggestion id in a cell's `# copilot:<id>`, `-- copilot:<id>` or `<!-- copilot:<id> -->` line, if any."""
    match = MARKER.search(cell)
    return match.group(1) if match else None


def normalise(code: str, *, drop_lines: tuple[str, ...] = ()) -> str:
    """The code without a leading cell-magic line, marker and header lines, trailing blanks and `;`."""
    lines = code.strip().splitlines()
    if lines and lines[0].lstrip().startswith("%%"):
        lines = lines[1:]
    dropped = {line.strip() for line in drop_lines}
    kept = [line.rstrip() for line in lines if not MARKER.match(line) and line.strip() not in dropped]
    return "\n".join(kept).strip().rstrip(";").rstrip()


def distance(a: str, b: str) -> float:
    """1 - difflib's similarity ratio: 0 for identical code, 1 for nothing in common."""
    if a == b:
        return 0.0
    return round(1.0 - difflib.SequenceMatcher(None, a, b, autojunk=False).ratio(), 4)


def levenshtein(a: str, b: str) -> int | None:
    """Character edits (insert, delete, substitute) from a to b; None when the texts are too long to count cheaply."""
    if a == b:
        return 0
    if len(a) * len(b) > MAX_LEVENSHTEIN_CELLS:
        return None
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
