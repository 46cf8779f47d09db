"""Write the fuzzers' seed corpus, tests/fuzz/corpus/<harness>/seed-*: small inputs of every shape
the code under test knows, from which libFuzzer's mutations start (crafted_images' costly kinds at
small sizes, every pixel layout of every format, headers claiming too much, hostile tensors).

    .venv/bin/python -m tests.fuzz.make_corpus

Seeds are rewritten; inputs a fuzzer found (finding-*) are left as they are.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from tests.services.vision_api import crafted_images
from tests.services.vision_api.conftest import encode, photo, pil_bytes, png_claiming

CORPUS = Path(__file__).resolve().parent / "corpus"
IMAGE_HARNESSES = ("fuzz_image_header", "fuzz_image_decode")


def image_seeds() -> dict[str, bytes]:
    small = photo(24, 32)
    rgba = np.dstack([small, np.full((24, 32), 200, np.uint8)])
    frames = [Image.new("RGB", (12, 10), colour) for colour in ("red", "blue")]
    seeds = {
        "png-gray.png": encode(small[:, :, 0]),
        "png-bgr.png": encode(small),
        "png-bgra.png": encode(rgba),
        "png-16bit.png": encode(small.astype(np.uint16) * 257),
        "png-16bit-alpha.png": encode(rgba.astype(np.uint16) * 257),
        "png-palette-trns.png": pil_bytes(Image.new("P", (12, 10)), "PNG", transparency=0),
        "png-rgb-trns.png": pil_bytes(Image.new("RGB", (12, 10)), "PNG", transparency=(0, 0, 0)),
        "png-gray-alpha.png": pil_bytes(Image.new("LA", (12, 10)), "PNG"),
        "png-exif-6.png": pil_bytes(Image.fromarray(small), "PNG", exif=_exif(6)),
        "png-claiming-100000x100000.png": png_claiming(100_000, 100_000),
        "png-claiming-1100000x1.png": png_claiming(1_100_000, 1),
        "png-claiming-1000x1000.png": png_claiming(1000, 1000),
        "png-interlaced.png": _interlaced_png(16, 12),
        "jpeg-baseline.jpg": encode(small, ".jpg"),
        "jpeg-gray.jpg": pil_bytes(Image.new("L", (16, 8), 90), "JPEG"),
        "jpeg-cmyk.jpg": pil_bytes(Image.new("CMYK", (16, 8), (0, 255, 0, 0)), "JPEG"),
        "jpeg-progressive-444.jpg": crafted_images.progressive_jpeg(48, 32),
        "jpeg-progressive-420.jpg": crafted_images.progressive_jpeg(48, 32, subsampling=2),
        "jpeg-many-scans.jpg": crafted_images.many_scan_jpeg(40, 32, 16),
        "jpeg-exif-3.jpg": crafted_images.exif_rotated_jpeg(48, 24, 3),
        "jpeg-exif-6.jpg": crafted_images.exif_rotated_jpeg(48, 24, 6),
        "jpeg-exif-8.jpg": crafted_images.exif_rotated_jpeg(48, 24, 8),
        "jpeg-restart-markers.jpg": pil_bytes(Image.fromarray(small), "JPEG", restart_marker_blocks=1),
        "jpeg-reduced-at-half.jpg": pil_bytes(Image.new("RGB", (1000, 700), (90, 20, 200)), "JPEG", quality=10),
        "gif-flat.gif": crafted_images.flat_gif(400, 300),
        "gif-transparent.gif": pil_bytes(Image.new("RGB", (12, 10), "red"), "GIF", transparency=0),
        "gif-animated.gif": pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "gif-claiming-65535x65535.gif": _gif_claiming(65535, 65535),
        "bmp-24bit.bmp": encode(small, ".bmp"),
        "bmp-32bit.bmp": pil_bytes(Image.fromarray(rgba), "BMP"),
        "bmp-8bit-palette.bmp": pil_bytes(Image.new("P", (12, 10)), "BMP"),
        "bmp-1bit.bmp": pil_bytes(Image.new("1", (12, 10)), "BMP"),
        "bmp-header-claiming-1100000x30.bmp": crafted_images.huge_bmp_header(),
        "bmp-header-claiming-1000x1000.bmp": crafted_images.huge_bmp_header(1000, 1000),
        "bmp-top-down.bmp": _top_down_bmp(encode(small, ".bmp")),
        "webp-lossy.webp": encode(small, ".webp"),
        "webp-lossless-flat.webp": crafted_images.lossless_webp(400, 300),
        "webp-alpha.webp": pil_bytes(Image.fromarray(rgba), "WEBP", lossless=False),
        "webp-exif-6.webp": pil_bytes(Image.fromarray(small), "WEBP", lossless=True, exif=_exif(6)),
        "webp-animated.webp": pil_bytes(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        "not-an-image.txt": b"hello, not an image",
    }
    return seeds


def tensor_seeds() -> dict[str, bytes]:
    """Serialized PredictRequests: the API services' own calls (small), the fill rule of every
    value field, and the declarations the server must refuse."""
    seeds = {
        "cv_sod-content.pb": _predict("cv_sod", img_in=_tensor(types_pb2.DT_FLOAT, [1, 8, 8, 3],
                                                               tensor_content=bytes(4 * 8 * 8 * 3))),
        "cv_sod-filled.pb": _predict("cv_sod", img_in=_tensor(types_pb2.DT_FLOAT, [2, 320, 320, 3], float_val=[0.5])),
        "lstm-words.pb": _predict("lstm", words=_tensor(types_pb2.DT_STRING, [2, 3],
                                                        string_val=["很".encode(), b"\xff", b"<pad>"] * 2),
                                  nwords=_tensor(types_pb2.DT_INT32, [2], int_val=[3, 1])),
        "lstm-words-filled.pb": _predict("lstm", words=_tensor(types_pb2.DT_STRING, [64, 2000], string_val=[b"x"]),
                                         nwords=_tensor(types_pb2.DT_INT64, [64], int64_val=[2000])),
        "padded-1x1000000000.pb": _predict("cv_sod", img_in=_tensor(types_pb2.DT_FLOAT, [1, 1_000_000_000],
                                                                    float_val=[0.0])),
        "padded-strings.pb": _predict("lstm", words=_tensor(types_pb2.DT_STRING, [1000, 1000, 1000],
                                                            string_val=[b"x" * 100])),
        "empty-values.pb": _predict("m", x=_tensor(types_pb2.DT_INT32, [4, 4])),
        "scalar.pb": _predict("m", x=_tensor(types_pb2.DT_DOUBLE, [], double_val=[1.5])),
        "too-many-values.pb": _predict("m", x=_tensor(types_pb2.DT_FLOAT, [2], float_val=[1, 2, 3])),
        "wrong-content-length.pb": _predict("m", x=_tensor(types_pb2.DT_FLOAT, [3], tensor_content=b"\0" * 5)),
        "negative-dim.pb": _predict("m", x=_tensor(types_pb2.DT_FLOAT, [-1, 3], float_val=[1.0])),
        "zero-dim.pb": _predict("m", x=_tensor(types_pb2.DT_FLOAT, [0, 1 << 40], float_val=[1.0])),
        "unknown-rank.pb": _predict("m", x=tensor_pb2.TensorProto(
            dtype=types_pb2.DT_FLOAT, tensor_shape=tensor_shape_pb2.TensorShapeProto(unknown_rank=True))),
        "half.pb": _predict("m", x=_tensor(types_pb2.DT_HALF, [2, 2], half_val=[15360])),
        "bfloat16.pb": _predict("m", x=_tensor(types_pb2.DT_BFLOAT16, [3], half_val=[16256, 0])),
        "bool.pb": _predict("m", x=_tensor(types_pb2.DT_BOOL, [3], bool_val=[True])),
        "complex64.pb": _predict("m", x=_tensor(types_pb2.DT_COMPLEX64, [2], scomplex_val=[1, 2, 3, 4])),
        "complex128-odd.pb": _predict("m", x=_tensor(types_pb2.DT_COMPLEX128, [2], dcomplex_val=[1, 2, 3])),
        "uint8-content.pb": _predict("m", x=_tensor(types_pb2.DT_UINT8, [2, 3], tensor_content=bytes(range(6)))),
        "uint64.pb": _predict("m", x=_tensor(types_pb2.DT_UINT64, [2], uint64_val=[1 << 63])),
        "int4.pb": _predict("m", x=_tensor(types_pb2.DT_INT4, [4], int_val=[7])),
        "float8.pb": _predict("m", x=_tensor(types_pb2.DT_FLOAT8_E4M3FN, [4], float8_val=b"\x01")),
        "string-content.pb": _predict("m", x=_tensor(types_pb2.DT_STRING, [2], tensor_content=b"ab")),
        "ref-dtype.pb": _predict("m", x=_tensor(types_pb2.DT_FLOAT_REF, [1], float_val=[1.0])),
        "resource-dtype.pb": _predict("m", x=_tensor(types_pb2.DT_RESOURCE, [1])),
        "unknown-dtype.pb": _predict("m", x=_tensor(1000, [1], float_val=[1.0])),
        "several-inputs.pb": _predict("m", a=_tensor(types_pb2.DT_FLOAT, [4_000_000], float_val=[1.0]),
                                      b=_tensor(types_pb2.DT_FLOAT, [4_000_000], float_val=[1.0]),
                                      c=_tensor(types_pb2.DT_INT8, [1 << 20], int_val=[1])),
    }
    return seeds


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def _interlaced_png(width: int, height: int) -> bytes:
    """An Adam7-interlaced 8-bit gray PNG (OpenCV writes none; PIL only reads them)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        columns, rows = len(range(x0, width, dx)), len(range(y0, height, dy))
        if columns and rows:
            raw += (b"\0" + bytes((7 * i) % 256 for i in range(columns))) * rows
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _gif_claiming(width: int, height: int) -> bytes:
    data = bytearray(pil_bytes(Image.new("P", (4, 4)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def _top_down_bmp(data: bytes) -> bytes:
    """The same BMP with a negative height: rows stored top to bottom (they are the other way round
    here, which only flips the picture)."""
    out = bytearray(data)
    (height,) = struct.unpack("<i", data[22:26])
    out[22:26] = struct.pack("<i", -height)
    return bytes(out)


def _tensor(dtype: int, dims: list[int], **fields) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=dtype, **fields)
    tensor.tensor_shape.dim.extend(tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims)
    return tensor


def _predict(model: str, **inputs: tensor_pb2.TensorProto) -> bytes:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    for name, tensor in inputs.items():
        request.inputs[name].CopyFrom(tensor)
    return request.SerializeToString()


def write(harness: str, seeds: dict[str, bytes]) -> None:
    folder = CORPUS / harness
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("seed-*"):
        old.unlink()
    for name, data in seeds.items():
        (folder / f"seed-{name}").write_bytes(data)


def main() -> None:
    images = image_seeds()
    for harness in IMAGE_HARNESSES:
        write(harness, images)
    write("fuzz_tensor_proto", tensor_seeds())
    for folder in sorted(CORPUS.iterdir()):
        files = list(folder.iterdir())
        size = sum(file.stat().st_size for file in files)
        print(f"{folder.relative_to(CORPUS.parent)}: {len(files)} files, {size:,} bytes")


if __name__ == "__main__":
    main()
