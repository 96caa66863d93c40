"""Reading a user's input file, with errors that say what to do."""

from __future__ import annotations

from pathlib import Path


class Unusable(Exception):
    """An input file that cannot be read as text; the message says what to do."""


def read_text(name: str, what: str = "") -> str:
    """The UTF-8 text of file ``name``; ``what`` names its kind in messages ("trace")."""
    kind = f"{what} file" if what else "file"
    try:
        data = Path(name).read_bytes()
    except FileNotFoundError:
        raise Unusable(f"{name}: no such {kind} (check the path)") from None
    except IsADirectoryError:
        raise Unusable(f"{name}: is a directory, not a {kind}") from None
    except PermissionError:
        raise Unusable(f"{name}: permission denied (make the file readable)") from None
    except OSError as exc:
        raise Unusable(f"{name}: cannot be read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Unusable(
            f"{name}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}; "
            "save it as UTF-8)"
        ) from None
