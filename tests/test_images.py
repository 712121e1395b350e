"""Image intake: every way an input can be bad gives a clear error; good inputs become RGB."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from experts.errors import ImageError
from experts.images import load_image, load_images, sha256_file


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _reason(source, **kw) -> str:
    with pytest.raises(ImageError) as info:
        load_image(source, **kw)
    return info.value.reason


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ImageError, match="no such file") as info:
        load_image(tmp_path / "nope.jpg")
    assert info.value.reason == "missing"
    assert str(tmp_path / "nope.jpg") in str(info.value)


def test_directory_is_not_a_file(tmp_path):
    assert _reason(tmp_path) == "not_a_file"


def test_text_file_is_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("definitely not a jpeg")
    assert _reason(p) == "not_an_image"


def test_empty_file_is_rejected(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    assert _reason(p) == "empty"


def test_truncated_jpeg_is_rejected(tmp_path, bus_jpg):
    data = bus_jpg.read_bytes()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    assert _reason(p) == "truncated"


def test_corrupt_png_body_is_rejected():
    data = bytearray(_png_bytes(Image.new("RGB", (64, 64), (10, 200, 30))))
    data[60:80] = b"\x00" * 20  # inside the IDAT chunk: header parses, pixels don't
    assert _reason(bytes(data)) in ("truncated", "not_an_image")


def test_decompression_bomb_cap_is_configurable():
    data = _png_bytes(Image.new("L", (400, 300)))
    with pytest.raises(ImageError, match="exceeds the cap of 100000") as info:
        load_image(data, max_pixels=100_000)
    assert info.value.reason == "too_large"
    assert load_image(data, max_pixels=120_000).size == (400, 300)


def test_zero_size_array_is_rejected():
    assert _reason(np.zeros((0, 5, 3), dtype=np.uint8)) == "empty"


def test_wrong_array_shape_and_dtype_are_rejected():
    assert _reason(np.zeros((4, 4, 7), dtype=np.uint8)) == "unsupported"
    assert _reason(np.zeros((4, 4, 3), dtype=np.complex64)) == "unsupported"
    assert _reason(np.full((4, 4), np.nan, dtype=np.float32)) == "unsupported"


def test_urls_need_opt_in():
    assert _reason("https://example.com/cat.jpg") == "url_disabled"


def test_unsupported_type():
    assert _reason(12345) == "unsupported"


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1", "I", "F"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new(mode, (8, 6))
    out = load_image(img)
    assert out.image.mode == "RGB" and out.size == (8, 6)


def test_16_bit_greyscale_keeps_its_range():
    arr = np.array([[0, 32768, 65535]], dtype=np.uint16)
    img = Image.fromarray(arr)
    assert img.mode == "I;16"
    out = np.asarray(load_image(img).image)
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_transparent_pixels_composite_on_white():
    img = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 255))
    out = np.asarray(load_image(img).image)
    assert out[0, 0].tolist() == [255, 255, 255] and out[0, 1].tolist() == [255, 0, 0]


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = load_image(_png_bytes(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_arrays_of_each_dtype(bus_jpg):
    assert load_image(np.ones((3, 4), dtype=np.float32)).image.getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.full((3, 4, 3), 65535, dtype=np.uint16)).image.getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.zeros((3, 4, 1), dtype=np.uint8)).size == (4, 3)


def test_content_hash_is_sha256_of_file_bytes_and_stable(bus_jpg):
    expected = hashlib.sha256(bus_jpg.read_bytes()).hexdigest()
    assert load_image(bus_jpg).sha256 == expected
    assert load_image(str(bus_jpg)).sha256 == expected
    assert load_image(bus_jpg.read_bytes()).sha256 == expected
    assert sha256_file(bus_jpg) == expected


def test_in_memory_hash_separates_shapes_with_same_bytes():
    a = load_image(np.zeros((2, 6), dtype=np.uint8)).sha256
    b = load_image(np.zeros((3, 4), dtype=np.uint8)).sha256
    assert a != b
    assert a == load_image(np.zeros((2, 6), dtype=np.uint8)).sha256


def test_batch_intake_keeps_going_after_a_bad_item(tmp_path, bus_jpg):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    out = load_images([bus_jpg, bad, tmp_path / "missing.png", bus_jpg])
    assert [type(x).__name__ for x in out] == ["LoadedImage", "ImageError", "ImageError", "LoadedImage"]
    assert [x.reason for x in out if isinstance(x, ImageError)] == ["not_an_image", "missing"]
