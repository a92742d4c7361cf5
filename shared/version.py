from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tagrun")
except PackageNotFoundError:  # running from a frozen agent binary or a bare checkout
    __version__ = "0.1.0"


def version_key(text: str) -> tuple[int, ...] | None:
    """A version's release numbers for comparing ("1.10.2" > "1.9"); None if `text` does not
    start with one. A pre-release or local suffix ("1.2.0rc1", "1.2.0+dev") counts as its
    release: the version window is about releases, not builds."""
    numbers: list[int] = []
    for part in text.strip().lstrip("v").split("."):
        digits = ""
        for char in part:
            if not char.isdigit():
                break
            digits += char
        if not digits:
            break
        numbers.append(int(digits))
        if len(digits) < len(part):
            break
    return tuple(numbers) or None


def older_than(version: str, minimum: str) -> bool:
    """`version` is known and below `minimum` (an unknown version is never refused: an agent
    that does not say its version cannot be told apart from a newer one)."""
    have, want = version_key(version), version_key(minimum)
    if have is None or want is None:
        return False
    width = max(len(have), len(want))
    return have + (0,) * (width - len(have)) < want + (0,) * (width - len(want))
