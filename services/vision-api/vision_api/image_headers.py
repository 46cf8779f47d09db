"""What a caller's image is, from its first bytes alone: its format, size, pixel layout, EXIF
orientation, and what decoding it will take in memory and time; read before any pixel is decoded,
so that a 50 kB file claiming 100000x100000 pixels costs nothing (vision_api.image_decoding decodes)."""

from __future__ import annotations

import dataclasses
import struct

from service_kit.core.refusals import InvalidInput, UnsupportedInput, UnusableInput

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WebP")

# JPEG start-of-frame markers (they carry the size); C4, C8 and CC are other segments.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_format(data: bytes) -> str | None:
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What the header says, enough to know the memory decoding will take before taking it."""

    kind: str
    width: int
    height: int
    channels: int  # as OpenCV decodes it (IMREAD_UNCHANGED); where the header leaves it open, the most
    sample_bytes: int = 1  # 2 for 16-bit PNG
    orientation: int = 1  # EXIF's: how the stored pixels are turned for display (1: as stored)
    scans: int = 1  # JPEG: libjpeg makes a pass over the whole image for each
    coefficient_bytes: int = 0  # JPEG progressive or multi-scan: libjpeg keeps every coefficient meanwhile

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) as the image is shown: EXIF orientations 5-8 turn it a quarter."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)

    def describe(self) -> str:
        layout = {1: "gray", 3: "color", 4: "color with alpha"}[self.channels]
        return f"{self.width}x{self.height} {8 * self.sample_bytes}-bit {layout} {self.kind}"

    def jpeg_reduction(self, min_side: int) -> int:
        """libjpeg scales by 2, 4 or 8 while decoding: the largest that keeps `min_side`."""
        if self.kind != "JPEG" or not min_side:
            return 1
        return next((f for f in (8, 4, 2) if min(self.width, self.height) >= f * min_side), 1)

    def decode_seconds(self, min_side: int = 0) -> float:
        """About how long the decoding child takes for this image on one core, from the 12 MP
        timings of bench/results/decode_guard.md (the larger per pixel of its two sizes): libjpeg's
        entropy decoding passes over every coefficient once a scan, however far it reduces, and its
        IDCT works at the reduced size; the other decoders' work follows their samples."""
        megapixels = self.pixels / 1e6
        if self.kind == "JPEG":
            entropy = megapixels * self.scans * JPEG_SECONDS_PER_SCAN_MEGAPIXEL
            return entropy + megapixels / self.jpeg_reduction(min_side) ** 2 * DECODE_SECONDS_PER_MEGAPIXEL["JPEG"]
        samples = self.sample_bytes * self.channels / 3 if self.kind == "PNG" else 1
        return megapixels * samples * DECODE_SECONDS_PER_MEGAPIXEL[self.kind]

    def working_bytes(self, min_side: int = 0) -> int:
        """Peak bytes of handling this image, in two steps that never overlap: decoding it (in the
        decoding child: the decoded pixels, an 8-bit copy of 16-bit ones with alpha (see
        model_preprocessing.image.to_rgb8), libjpeg's coefficients of a progressive JPEG, and
        what a decoder holds beside its output); then, in the worker, the mask at full size and
        its PNG (compressed, at most about a byte a pixel). Checked against measured peaks of
        every format in tests/services/vision_api/test_memory.py.
        """
        factor = self.jpeg_reduction(min_side)
        decoded_pixels = -(-self.width // factor) * -(-self.height // factor)
        channels = 3 if factor > 1 else self.channels  # reduced decoding is always BGR
        decoded = decoded_pixels * channels * self.sample_bytes
        eight_bit_copy = decoded_pixels * channels if self.sample_bytes == 2 and channels == 4 else 0
        decoder = self.coefficient_bytes + self.pixels * DECODER_BYTES_PER_PIXEL.get(self.kind, 0)
        return max(decoded + eight_bit_copy + decoder, 2 * self.pixels)


# What a decoder holds beside the pixels it returns, per pixel (measured: bench/results/decode_guard.md).
# OpenCV's GIF decoder: the LZW output (1 byte) and a BGRA canvas (4) it copies out of; libwebp: the
# RGBA picture (4) OpenCV converts into its BGR(A) one. PNG, BMP and baseline JPEG decode in place.
DECODER_BYTES_PER_PIXEL = {"GIF": 5, "WebP": 4}
# Decoding time per megapixel decoded (PNG's per 8-bit RGB megapixel) on the machine this is developed on
# (ImageHeader.decode_seconds), and libjpeg's entropy decoding per scan of a megapixel.
DECODE_SECONDS_PER_MEGAPIXEL = {"JPEG": 0.013, "PNG": 0.012, "GIF": 0.023, "WebP": 0.015, "BMP": 0.020}
JPEG_SECONDS_PER_SCAN_MEGAPIXEL = 0.0012


def read_header(data: bytes) -> ImageHeader:
    """The image's format, size and pixel layout from its first bytes, or an InputError."""
    if not data:
        raise UnusableInput("empty_image", "the image is empty (0 bytes)")
    kind = image_format(data)
    if kind is None:
        raise UnsupportedInput("not_an_image", f"not a supported image; send one of {', '.join(ACCEPTED_FORMATS)}")
    try:
        header = _HEADER_READERS[kind](data)
    except (struct.error, IndexError, ValueError, KeyError):
        header = None
    if header is None:
        raise InvalidInput("corrupt_image", f"the {kind} header is unreadable")
    if header.width == 0 or header.height == 0:
        raise UnusableInput("empty_image", f"the image is {header.width}x{header.height} pixels")
    return header


def _png_header(data: bytes) -> ImageHeader:
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 3: 3, 4: 4, 6: 4}[color_type]
    chunks = _png_chunks_before_pixels(data)
    if channels == 3 and b"tRNS" in chunks:
        channels = 4  # OpenCV adds an alpha channel for a tRNS chunk
    return ImageHeader("PNG", width, height, channels, 2 if depth == 16 else 1,
                       orientation=_exif_orientation(chunks.get(b"eXIf", b"")))


def _png_chunks_before_pixels(data: bytes) -> dict[bytes, bytes]:
    """The chunks before the first IDAT (where tRNS and eXIf must be), by type. Every chunk must
    end within the data: OpenCV's PNG reader allocates (and zero-fills) what a chunk's length
    declares before reading it, so a 118-byte file declaring 4 GB cost 3.9 GB (found by
    tests/fuzz); such a file is corrupt, refused here before anything is allocated."""
    chunks, position, pixels_seen = {}, 8, False
    while position + 8 <= len(data):
        length, chunk = struct.unpack(">I4s", data[position:position + 8])
        if position + 12 + length > len(data):
            raise ValueError(f"the PNG chunk {chunk!r} runs past the end of the file")
        pixels_seen = pixels_seen or chunk == b"IDAT"
        if not pixels_seen:
            chunks.setdefault(chunk, data[position + 8:position + 8 + length])
        position += 12 + length
    return chunks


def _gif_header(data: bytes) -> ImageHeader:
    width, height = struct.unpack("<HH", data[6:10])
    return ImageHeader("GIF", width, height, 4)  # a transparent colour makes it BGRA


def _bmp_header(data: bytes) -> ImageHeader:
    width, height, _, bits = struct.unpack("<iiHH", data[18:30])
    return ImageHeader("BMP", abs(width), abs(height), 4 if bits == 32 else 3)


def _webp_header(data: bytes) -> ImageHeader | None:
    size = _webp_size(data)
    if size is None:
        return None
    channels = 3 if data[12:16] == b"VP8 " else 4  # only simple lossy has no alpha
    return ImageHeader("WebP", *size, channels, orientation=_exif_orientation(_riff_chunk(data, b"EXIF")))


def _riff_chunk(data: bytes, wanted: bytes) -> bytes:
    """The first chunk of this type in a RIFF file (WebP), or b""."""
    position = 12
    while position + 8 <= len(data):
        chunk, (length,) = data[position:position + 4], struct.unpack("<I", data[position + 4:position + 8])
        if chunk == wanted:
            return data[position + 8:position + 8 + length]
        position += 8 + length + (length & 1)
    return b""


def _jpeg_header(data: bytes) -> ImageHeader | None:
    frame = _jpeg_frame(data)
    if frame is None:
        return None
    channels = 1 if len(frame.sampling) == 1 else 3  # CMYK decodes to BGR
    return ImageHeader("JPEG", frame.width, frame.height, channels, orientation=frame.orientation,
                       scans=data.count(_JPEG_SOS, frame.first_scan),
                       coefficient_bytes=frame.coefficient_bytes() if frame.buffered else 0)


_HEADER_READERS = {"PNG": _png_header, "GIF": _gif_header, "BMP": _bmp_header, "WebP": _webp_header,
                   "JPEG": _jpeg_header}

_JPEG_SOS = b"\xff\xda"
_JPEG_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}


@dataclasses.dataclass(frozen=True)
class _JpegFrame:
    width: int
    height: int
    sampling: tuple[tuple[int, int], ...]  # (horizontal, vertical) sampling factor of each component
    progressive: bool
    first_scan: int  # where the first scan's marker is
    first_scan_components: int
    orientation: int

    @property
    def buffered(self) -> bool:
        """libjpeg keeps the whole image's coefficients when the image comes in several scans:
        always for progressive JPEG, and for sequential JPEG whose first scan holds not every
        component (non-interleaved)."""
        return self.progressive or (len(self.sampling) > 1 and self.first_scan_components < len(self.sampling))

    def coefficient_bytes(self) -> int:
        """Every component's 8x8 blocks, padded to whole MCUs, 64 coefficients of 2 bytes each."""
        max_h, max_v = max(h for h, _ in self.sampling), max(v for _, v in self.sampling)
        mcu_columns, mcu_rows = -(-self.width // (8 * max_h)), -(-self.height // (8 * max_v))
        return sum(mcu_columns * h * mcu_rows * v * 128 for h, v in self.sampling)


def _jpeg_frame(data: bytes) -> _JpegFrame | None:
    """The start-of-frame segment's facts, the EXIF orientation and where the scans begin."""
    position, frame, orientation = 2, None, 1
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # standalone markers have no length
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2:position + 4])
        segment = data[position + 4:position + 2 + length]
        if marker == 0xE1 and segment.startswith(b"Exif\0\0") and orientation == 1:
            orientation = _exif_orientation(segment[6:])
        elif marker in _JPEG_SOF and frame is None:
            height, width, count = struct.unpack(">HHB", segment[1:6])
            sampling = tuple((segment[7 + 3 * i] >> 4, segment[7 + 3 * i] & 0x0F) for i in range(count))
            if not all(1 <= h <= 4 and 1 <= v <= 4 for h, v in sampling):
                raise ValueError("JPEG sampling factors out of range")
            frame = (width, height, sampling, marker in _JPEG_PROGRESSIVE)
        elif marker == 0xDA:
            if frame is None:
                return None
            width, height, sampling, progressive = frame
            return _JpegFrame(width, height, sampling, progressive, position, segment[0] if segment else 0,
                              orientation)
        position += 2 + length
    return None


def _exif_orientation(tiff: bytes) -> int:
    """EXIF's Orientation (tag 0x0112 of the first IFD) in a TIFF-structured block; 1 if absent."""
    if tiff.startswith(b"Exif\0\0"):  # WebP writers differ on this prefix
        tiff = tiff[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return 1
    (offset,) = struct.unpack(order + "I", tiff[4:8])
    if offset + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[offset:offset + 2])
    for entry in range(offset + 2, min(offset + 2 + 12 * count, len(tiff) - 11), 12):
        tag, kind, _, value = struct.unpack(order + "HHIH", tiff[entry:entry + 10])
        if tag == 0x0112 and kind == 3:
            return value if 1 <= value <= 8 else 1
    return 1


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":
        b0, b1, b2, b3 = data[21:25]
        return 1 + (b0 | (b1 & 0x3F) << 8), 1 + (b1 >> 6 | b2 << 2 | (b3 & 0x0F) << 10)
    if chunk == b"VP8X":
        return (1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little"))
    return None
