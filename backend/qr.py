"""QR codes for activation URIs: PNG, SVG and terminal text."""

from __future__ import annotations

import io
from pathlib import Path

import qrcode
import qrcode.image.svg


def _code(data: str) -> qrcode.QRCode:
    # Medium error correction survives a phone camera at an angle; the URIs are short.
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=4)
    code.add_data(data)
    code.make(fit=True)
    return code


def write_png(data: str, path: Path) -> None:
    """Write a PNG QR code of ``data``."""
    _code(data).make_image().save(str(path))


def write_svg(data: str, path: Path) -> None:
    """Write an SVG QR code of ``data``, dark modules on a white square.

    The white background is part of the image: a transparent one vanishes on a page with a
    dark theme and cameras then find no code.
    """
    _code(data).make_image(image_factory=qrcode.image.svg.SvgPathFillImage).save(str(path))


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
