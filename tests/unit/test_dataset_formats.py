"""Upload parsing: each format read right, each kind of bad file refused with a reason."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
from typing import Any

import numpy as np
import pytest

from app.core.dataset_arrays import DatasetArrays, read_normalised, write_normalised
from app.core.errors import InvalidInput, PayloadTooLarge
from app.services import dataset_formats as formats
from app.services.dataset_formats.archive import Budget, read_member
from app.services.dataset_options import parse_options
from tests.dataset_files import (
    SHAPES,
    blobs,
    csv_bytes,
    encode_image,
    flower_csv,
    image_zip,
    npz_bytes,
    shape_images,
    zip_bytes,
)

BOUNDS = formats.UploadBounds(max_unpacked_bytes=4_000_000, max_files=1000,
                              max_sample_elements=100_000)


def parse(data: bytes, fmt: str, bounds: formats.UploadBounds = BOUNDS,
          **fields: str) -> DatasetArrays:
    options = parse_options(f"upload.{fmt}", fields)
    return formats.parse(io.BytesIO(data), options, bounds)


def refused(data: bytes, fmt: str, *, bounds: formats.UploadBounds = BOUNDS,
            **fields: str) -> dict[str, Any]:
    """The one problem a bad upload is refused with."""
    with pytest.raises(InvalidInput) as info:
        parse(data, fmt, bounds, **fields)
    [problem] = info.value.detail
    return problem  # type: ignore[no-any-return]


def too_large(data: bytes, fmt: str, bounds: formats.UploadBounds = BOUNDS, **fields: str) -> str:
    with pytest.raises(PayloadTooLarge) as info:
        parse(data, fmt, bounds, **fields)
    return str(info.value.detail)


# -- npz --------------------------------------------------------------------------


def test_npz_classification_labels_become_class_indices() -> None:
    x, y = blobs(60)
    data = parse(npz_bytes(x=x, y=y + 5), "npz")  # labels 5, 6, 7
    assert data.task == "classification" and data.class_names == ["5", "6", "7"]
    assert data.x.dtype == np.float32 and data.sample_shape == [4]
    np.testing.assert_array_equal(data.y, y)
    assert data.x_val is None and data.n_val == 0


def test_npz_string_labels_and_validation_arrays() -> None:
    x, y = blobs(60)
    names = np.array(["cat", "dog", "eel"])
    data = parse(npz_bytes(x=x.astype(np.float64), y=names[y], x_val=x[:10],
                           y_val=names[y[:10]]), "npz")
    assert data.class_names == ["cat", "dog", "eel"] and data.n_val == 10
    np.testing.assert_array_equal(data.y_val, y[:10])
    assert data.x.dtype == np.float32


def test_npz_float_targets_are_regression_unless_told() -> None:
    x, _ = blobs(40)
    y = x.sum(axis=1)
    data = parse(npz_bytes(x=x, y=y), "npz")
    assert data.task == "regression" and data.y.shape == (40, 1) and data.class_names == []
    labels = np.round(np.abs(y)) % 2
    classes = parse(npz_bytes(x=x, y=labels), "npz", task="classification")
    assert classes.task == "classification" and classes.class_names == ["0", "1"]


def test_npz_uint8_images_stay_uint8() -> None:
    x, y = shape_images(4, size=8)
    data = parse(npz_bytes(x=x, y=y), "npz")
    assert data.x.dtype == np.uint8 and data.sample_shape == [8, 8, 3]


@pytest.mark.parametrize("arrays, words", [
    ({"x": np.zeros((5, 2)), "y": np.arange(4)}, "x has 5 samples but y has 4"),
    ({"x": np.array([[1.0, np.nan], [0.0, 1.0]]), "y": np.array([0, 1])}, "NaN or infinite"),
    ({"x": np.array([[1.0, np.inf], [0.0, 1.0]]), "y": np.array([0, 1])}, "NaN or infinite"),
    ({"x": np.zeros((2, 2)), "y": np.array([0.5, np.nan])}, "NaN or infinite"),
    ({"x": np.zeros((4, 2)), "y": np.array([1, 1, 1, 1])}, "single class"),
    ({"x": np.zeros((4, 3, 3)), "y": np.array([0, 1, 0, 1])}, "(N, H, W, C)"),
    ({"x": np.zeros((2, 2)), "y": np.array([0, 1]), "w": np.zeros(2)}, "unexpected entry 'w.npy'"),
    ({"x": np.zeros((2, 2))}, "no array y"),
    ({"x": np.zeros((2, 2)), "y": np.array([0, 1]), "x_val": np.zeros((1, 2))}, "together"),
    ({"x": np.zeros((2, 2)), "y": np.array([0, 1]), "x_val": np.zeros((1, 3)),
      "y_val": np.array([0])}, "must match"),
    ({"x": np.zeros((2, 2)), "y": np.array([0, 1]), "x_val": np.zeros((1, 2)),
      "y_val": np.array([7])}, "label '7'"),
    ({"x": np.zeros((2, 2), dtype=np.complex64), "y": np.array([0, 1])}, "dtype complex64"),
])
def test_npz_bad_arrays_are_refused(arrays: dict[str, np.ndarray], words: str) -> None:
    problem = refused(npz_bytes(**arrays), "npz")
    assert problem["path"] == "file" and words in problem["message"], problem


def test_npz_with_object_arrays_is_refused_without_unpickling() -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (pytest.fail, ("the upload was unpickled",))

    payload = npz_bytes(x=np.zeros((2, 2)), y=np.array([Boom(), Boom()], dtype=object))
    assert "pickle" in refused(payload, "npz")["message"]


def test_truncated_and_corrupt_npz_are_refused() -> None:
    x, y = blobs(50)
    payload = npz_bytes(x=x, y=y)
    assert "not a valid npz" in refused(payload[: len(payload) // 2], "npz")["message"]
    # Flip bytes inside x's data: the archive opens, the CRC check fails on read.
    corrupt = bytearray(payload)
    start = payload.index(b"x.npy") + 200
    corrupt[start:start + 16] = bytes(16)
    assert "corrupt" in refused(bytes(corrupt), "npz")["message"]
    assert "not a valid npz" in refused(b"not a zip at all", "npz")["message"]


def test_npz_header_promising_huge_array_is_refused_before_allocating() -> None:
    # A few hundred bytes whose header claims a 1 GB array, under a limit that would allow it:
    # the claim is held to the bytes the entry has, before anything is allocated.
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f8", "fortran_order": False, "shape": (125_000_000,)})
    payload = zip_bytes({"x.npy": buffer.getvalue() + b"\0" * 64,
                         "y.npy": npz_member(np.arange(2))})
    assert len(payload) < 1000
    roomy = formats.UploadBounds(max_unpacked_bytes=2 << 30, max_files=10,
                                 max_sample_elements=100)
    tracemalloc.start()
    try:
        message = refused(payload, "npz", bounds=roomy)["message"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "promises 1000000000 bytes" in message and "holds 64" in message
    assert peak < 10_000_000


def test_npz_directory_sizes_are_held_to_the_bytes_present() -> None:
    x, y = blobs(50)
    payload = zip_bytes({"x.npy": npz_member(x), "y.npy": npz_member(y)})
    liar = bytearray(payload)
    central = liar.index(b"PK\x01\x02")  # x.npy's directory entry: claim 1 GB unpacked
    struct.pack_into("<I", liar, central + 24, 10**9)
    assert "more than its compression can give" in refused(bytes(liar), "npz")["message"]
    struct.pack_into("<I", liar, central + 20, 10**8)  # and 100 MB compressed
    assert "claims more compressed bytes" in refused(bytes(liar), "npz")["message"]


def npz_member(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a)
    return buffer.getvalue()


def test_npz_bomb_is_refused_from_its_directory() -> None:
    payload = zip_bytes({"x.npy": npz_member(np.zeros((2_000_000, 1))),
                         "y.npy": npz_member(np.zeros(2_000_000, dtype=np.int64))})
    assert len(payload) < 200_000
    assert "unpacks to more than" in too_large(payload, "npz")


# -- csv --------------------------------------------------------------------------


def test_csv_string_labels_and_feature_columns_in_file_order() -> None:
    payload, x, y, names = flower_csv(90)
    data = parse(payload, "csv", target="species")
    assert data.task == "classification" and data.class_names == names
    assert data.feature_names == ["petal", "sepal", "stem"]
    np.testing.assert_allclose(data.x, x, atol=1e-5)
    np.testing.assert_array_equal(data.y, y)


def test_csv_numeric_labels_are_classes_and_regression_on_request() -> None:
    payload = csv_bytes(["a", "b", "label"], [[1, 2, 10], [3, 4, 2], [5, 6, 10], [7, 8, 2.0]])
    data = parse(payload, "csv", target="label")
    assert data.class_names == ["2", "10"]  # numeric order, not string order
    np.testing.assert_array_equal(data.y, [1, 0, 1, 0])
    reg = parse(payload, "csv", target="label", task="regression")
    assert reg.task == "regression" and reg.y.shape == (4, 1) and reg.y.dtype == np.float32


@pytest.mark.parametrize("rows, words", [
    ([["1", "2", "a"], ["3", "b"]], "line 3 has 2 fields but the header has 3"),
    ([["1", "x", "a"], ["3", "4", "b"]], "column 'f2' must be numeric, but line 2 holds 'x'"),
    ([["1", "", "a"], ["3", "4", "b"]], "line 2 is empty"),
    ([["1", "nan", "a"], ["3", "4", "b"]], "NaN or infinite"),
    ([["1", "inf", "a"], ["3", "4", "b"]], "NaN or infinite"),
    ([["1", "2", "a"], ["3", "4", "a"]], "single class"),
    ([["1", "2", ""], ["3", "4", "b"]], "no value in the target column"),
    ([], "no data rows"),
])
def test_bad_csv_rows_are_refused(rows: list[list[str]], words: str) -> None:
    problem = refused(csv_bytes(["f1", "f2", "label"], rows), "csv", target="label")
    assert words in problem["message"], problem


def test_csv_target_must_name_a_column_or_default_to_label() -> None:
    payload = csv_bytes(["f1", "label"], [[1, "a"], [2, "b"]])
    problem = refused(payload, "csv", target="species")
    assert problem["path"] == "target" and "'f1', 'label'" in problem["message"]
    data = parse(payload, "csv")
    assert data.class_names == ["a", "b"] and data.extra == {"target": "label"}
    unnamed = csv_bytes(["f1", "kind"], [[1, "a"], [2, "b"]])
    problem = refused(unnamed, "csv")
    assert problem["path"] == "target" and "form field 'target'" in problem["message"]


def test_csv_regression_needs_numeric_targets_and_utf8() -> None:
    payload = csv_bytes(["f1", "y"], [[1, "0.5"], [2, "high"]])
    assert "must be numeric for regression" in refused(payload, "csv", target="y",
                                                        task="regression")["message"]
    assert "not UTF-8" in refused(b"f1,y\n1,\xff\xfe\n", "csv", target="y")["message"]


# -- image zips ---------------------------------------------------------------------


def test_zip_of_class_folders_decodes_to_uint8_hwc() -> None:
    x, y = shape_images(3, size=12)
    data = parse(image_zip(x, y), "zip")
    assert data.task == "classification" and data.class_names == list(SHAPES)
    assert data.x.dtype == np.uint8 and data.x.shape == (9, 12, 12, 3)
    np.testing.assert_array_equal(data.x, x)  # PNG is lossless: exactly the pixels we drew
    np.testing.assert_array_equal(data.y, y)


def test_zip_grayscale_keeps_one_channel_and_a_root_folder_is_skipped() -> None:
    x, y = shape_images(2, size=10, mode="L")
    junk = {"shapes/.DS_Store": b"junk", "__MACOSX/shapes/._circle": b"junk"}
    files = {f"shapes/{SHAPES[label]}/{i}.png": encode_image(p) for i, (p, label)
             in enumerate(zip(x, y, strict=True))}
    data = parse(zip_bytes({**files, **junk}), "zip")
    assert data.x.shape == (6, 10, 10, 1) and data.class_names == list(SHAPES)


def test_zip_images_are_brought_to_the_common_or_given_size() -> None:
    rng_x, y = shape_images(3, size=16)
    small, _ = shape_images(1, size=8)
    files = {f"{SHAPES[label]}/{i}.png": encode_image(p) for i, (p, label)
             in enumerate(zip(rng_x, y, strict=True))}
    files["circle/odd.jpg"] = encode_image(small[0], "jpg")
    data = parse(zip_bytes(files), "zip")
    assert data.x.shape == (10, 16, 16, 3)
    sized = parse(zip_bytes(files), "zip", image_size="8x12")
    assert sized.x.shape == (10, 8, 12, 3)


@pytest.mark.parametrize("files, dirs, words", [
    ({"../evil/1.png": "img", "cat/1.png": "img"}, (), "escapes its folder"),
    ({"/abs/1.png": "img", "cat/1.png": "img"}, (), "absolute path"),
    ({"cat/1.png": "img", "dog/2.png": b"not a png"}, (), "'dog/2.png' does not decode"),
    ({"cat/1.png": "img", "dog/2.png": "truncated"}, (), "'dog/2.png' does not decode"),
    ({"cat/1.png": "img", "dog/2.png": "img"}, ("eel",), "class folder 'eel' has no images"),
    ({"cat/1.png": "img", "cat/2.png": "img"}, (), "one class folder ('cat')"),
    ({"cat/1.png": "img", "dog/2.png": "img", "3.png": "img"}, (), "not CLASS_NAME/IMAGE"),
    ({"cat/1.png": "img", "dog/notes.txt": b"hi"}, (), "not an image"),
])
def test_bad_image_zips_are_refused(files: dict[str, Any], dirs: tuple[str, ...],
                                    words: str) -> None:
    x, _ = shape_images(1, size=8)
    good = encode_image(x[0])
    content = {name: good if data == "img" else good[: len(good) // 2]
               if data == "truncated" else data for name, data in files.items()}
    problem = refused(zip_bytes(content, dirs), "zip")
    assert words in problem["message"], problem


def test_truncated_zip_is_refused() -> None:
    x, y = shape_images(2, size=8)
    payload = image_zip(x, y)
    assert "not a valid zip" in refused(payload[:-30], "zip")["message"]


def test_zip_bomb_is_refused_by_its_directory_and_while_reading() -> None:
    x, _ = shape_images(1, size=8)
    bomb = zip_bytes({"cat/1.png": encode_image(x[0]), "dog/2.png": bytes(5_000_000)})
    assert len(bomb) < 50_000
    assert "unpacks to more than" in too_large(bomb, "zip")
    # A directory that lies about sizes does not get past the reads: zipfile stops at the
    # recorded size and the CRC no longer matches.
    liar = bytearray(bomb)
    central = liar.rindex(b"PK\x01\x02")
    struct.pack_into("<I", liar, central + 24, 10)  # the uncompressed size field
    assert "corrupt" in refused(bytes(liar), "zip")["message"]
    # And the bytes a read inflates are counted as they come.
    with zipfile.ZipFile(io.BytesIO(bomb)) as zf, pytest.raises(PayloadTooLarge):
        read_member(zf, zf.getinfo("dog/2.png"), Budget(1_000_000))


def test_decoded_images_and_file_count_are_bounded() -> None:
    # Flat 64x64 pictures: tiny as PNG files, 12 KiB each once decoded.
    flat = {f"{c}/{i}.png": encode_image(np.full((64, 64, 3), 40 * i, np.uint8))
            for c in ("dark", "light") for i in range(5)}
    tight = formats.UploadBounds(max_unpacked_bytes=100_000, max_files=1000,
                                 max_sample_elements=100_000)
    assert "decoded images" in too_large(zip_bytes(flat), "zip", tight)
    x, y = shape_images(20, size=16)
    payload = image_zip(x, y)
    few = formats.UploadBounds(max_unpacked_bytes=4_000_000, max_files=10,
                               max_sample_elements=100_000)
    assert "TRAINERY_MAX_UPLOAD_FILES" in too_large(payload, "zip", few)


# -- options and the normalised form --------------------------------------------------


@pytest.mark.parametrize("filename, fields, path", [
    ("data.parquet", {}, "file"),
    ("data.npz", {"task": "ranking"}, "task"),
    ("data.zip", {"image_size": "huge"}, "image_size"),
    ("data.zip", {"image_size": "0x28"}, "image_size"),
    ("data.zip", {"task": "regression"}, "task"),
])
def test_bad_options_name_their_field(filename: str, fields: dict[str, str], path: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_options(filename, fields)
    assert [p["path"] for p in info.value.detail] == [path]


def test_format_field_wins_over_the_file_name() -> None:
    assert parse_options("blob.bin", {"format": "NPZ"}).format == "npz"
    assert parse_options("x.zip", {"image_size": "28x32"}).image_size == (28, 32)


def test_normalised_round_trip() -> None:
    payload, *_ = flower_csv(30)
    data = parse(payload, "csv", target="species")
    buffer = io.BytesIO()
    write_normalised(data, buffer)
    buffer.seek(0)
    back = read_normalised(buffer)
    assert back.task == data.task and back.class_names == data.class_names
    assert back.feature_names == data.feature_names and back.x_val is None
    np.testing.assert_array_equal(back.x, data.x)
    np.testing.assert_array_equal(back.y, data.y)
