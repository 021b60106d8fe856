"""Bounds on untrusted inputs, checked before they are inflated: a small file must not be able to take
gigabytes. An image's decoded size is read from its header (PNG IHDR, JPEG SOF) before it is decoded,
and compared with the memory this machine has available."""
from __future__ import annotations

import os
import struct

from .errors import DataError

# The longest side of an input size lightseg takes (``--size H W``): far past any camera, and small enough
# that a tensor's element count stays within int64 at any channel count (a larger side overflowed in torch).
MAX_SIDE = 1_000_000

# Decoding one pixel: OpenCV's decode buffer (up to 16 bits a channel) plus the RGB copy and the float
# tensor made from it: 3 x 2 + 3 + 3 x 4 = 21 bytes, rounded up.
DECODE_BYTES_PER_PIXEL = 24
GB = 1024 ** 3


def available_memory():
    """Bytes of memory available to a new allocation (Linux: MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def header_size(head: bytes):
    """(H, W) that a PNG or JPEG declares in its first bytes (``head``: 64 KiB is plenty), or None for
    other formats or a header that does not parse. Nothing is decoded."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) >= 24 and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return h, w
    if head[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", head[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and i + 9 <= len(head):
            h, w = struct.unpack(">HH", head[i + 5:i + 9])
            return h, w
        i += 2 + length
    return None


def check_decoded_size(path, head: bytes, limit=None) -> None:
    """Refuse, before decoding, an image whose header declares more pixels than fit in ``limit`` bytes
    (default: the memory available now), at :data:`DECODE_BYTES_PER_PIXEL`."""
    size = header_size(bytes(head[:65536]))
    if size is None:
        return
    limit = available_memory() if limit is None else limit
    h, w = size
    need = h * w * DECODE_BYTES_PER_PIXEL
    if limit is not None and need > limit:
        raise DataError(f"{path}: its header declares {w}x{h} pixels ({h * w / 1e6:.0f} Mpx): decoding it would need "
                        f"about {need / GB:.1f} GB and {limit / GB:.1f} GB is available; resize or tile the image, "
                        "or remove it (a small file declaring a huge image is a decompression bomb)")


def check_fits(what: str, need: int, fix: str) -> None:
    """Refuse what the user asked for when its memory estimate ``need`` exceeds the available memory."""
    available = available_memory()
    if available is not None and need > available:
        raise DataError(f"{what} would need about {need / GB:.1f} GB of memory and {available / GB:.1f} GB is "
                        f"available; {fix}")


# A list file names each sample on one line: two paths of at most PATH_MAX (4096) bytes each.
MAX_LIST_BYTES = 64 * 1024 ** 2  # about 500,000 samples of 128-byte lines
MAX_LINE_BYTES = 2 * 4096 + 16


def read_list_file(path) -> bytes:
    """The bytes of a list file, refused when it is larger than :data:`MAX_LIST_BYTES` (before reading it) or
    holds a line longer than :data:`MAX_LINE_BYTES`."""
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        raise DataError(f"list file {path} not found; check the dataset root") from None
    if size > MAX_LIST_BYTES:
        raise DataError(f"list file {path} is {size / 1024 ** 2:.0f} MiB, over the {MAX_LIST_BYTES // 1024 ** 2} MiB a "
                        "list of image/label paths can need; is it the right file?")
    with open(path, "rb") as f:
        data = f.read(MAX_LIST_BYTES + 1)
    for n, line in enumerate(data.split(b"\n"), 1):
        if len(line) > MAX_LINE_BYTES:
            raise DataError(f"{path}:{n}: a line of {len(line)} bytes, over the {MAX_LINE_BYTES} that two paths can "
                            "take; is it the right file (a list of 'image_path label_path' lines)?")
    return data


# Peak memory of one image: (12 + 8 C) bytes per pixel at the image's size (the float input, the scores of C
# classes and their copy), plus (WHOLE_BYTES_PER_PIXEL + 4 C) per pixel the model sees (activations): 440 B/px
# at 19 classes, above the 238-380 B/px measured (peak RSS, eager, CPU) for the five model families at 1024x1024.
# Slide mode keeps the input, the summed scores and the label map at full size; the model sees one window.
WHOLE_BYTES_PER_PIXEL = 200
SLIDE_BYTES_PER_PIXEL = 64


def estimate_memory(h, w, num_classes, mode="whole", crop=None, size=None) -> int:
    """Rough peak bytes to segment one h x w image (see ``WHOLE_BYTES_PER_PIXEL``)."""
    classes = num_classes or 19
    pixels = h * w
    model_pixels = size[0] * size[1] if size else pixels
    if mode == "slide":
        window = min(model_pixels, crop[0] * crop[1])
        return pixels * (SLIDE_BYTES_PER_PIXEL + 8 * classes) + window * (WHOLE_BYTES_PER_PIXEL + 4 * classes)
    return pixels * (12 + 8 * classes) + model_pixels * (WHOLE_BYTES_PER_PIXEL + 4 * classes)
