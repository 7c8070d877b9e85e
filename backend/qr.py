"""QR codes for activation URIs: PNG, SVG and terminal text.

The files hold what the QR code holds, an activation code or an OATH seed, so they are
written like a key: mode 0600 whatever the umask, never through a symbolic link (someone
else's link in a shared directory would send the secret where they can read it), and
replacing only a regular file the caller owns, through a new file renamed over it.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

import qrcode
import qrcode.image.svg

from backend.errors import BadRequest

Writer = Callable[[str, Path], None]


def _code(data: str) -> qrcode.QRCode:
    # Medium error correction survives a phone camera at an angle; the URIs are short.
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4)
    code.add_data(data)
    code.make(fit=True)
    return code


def check_target(path: Path) -> None:
    """Raise :class:`BadRequest` unless ``path`` may receive a QR code file: its directory
    exists, and it is absent or a regular file of ours (not a symbolic link)."""
    if not path.parent.is_dir():
        raise BadRequest(f"cannot write {path}: its directory does not exist")
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise BadRequest(
            f"cannot write {path}: it is a symbolic link (the QR code holds a secret; "
            "give the path of a new file)"
        )
    if not stat.S_ISREG(info.st_mode):
        raise BadRequest(f"cannot write {path}: it is not a regular file")
    if info.st_uid != os.geteuid():
        raise BadRequest(f"cannot write {path}: it belongs to another user")


def _write_private(path: Path, content: bytes) -> None:
    check_target(path)
    # mkstemp: a new file (O_EXCL, so never an existing one or a link), mode 0600 regardless
    # of the umask, in the same directory so that the rename is atomic. A rename replaces a
    # link planted after the check instead of following it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_png(data: str, path: Path) -> None:
    """Write a PNG QR code of ``data`` (mode 0600, never through a link)."""
    _write_private(path, png_bytes(data))


def write_svg(data: str, path: Path) -> None:
    """Write an SVG QR code of ``data``, dark modules on a white square (mode 0600, never
    through a link).

    The white background is part of the image: a transparent one vanishes on a page with a
    dark theme and cameras then find no code.
    """
    buffer = io.BytesIO()
    _code(data).make_image(image_factory=qrcode.image.svg.SvgPathFillImage).save(buffer)
    _write_private(path, buffer.getvalue())


def png_bytes(data: str) -> bytes:
    """A PNG QR code in memory (for web pages)."""
    buffer = io.BytesIO()
    _code(data).make_image().save(buffer)
    return buffer.getvalue()


def terminal_text(data: str) -> str:
    """The QR code drawn with block characters, for a terminal."""
    out = io.StringIO()
    _code(data).print_ascii(out=out, invert=True)
    return out.getvalue()
