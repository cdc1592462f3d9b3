"""Dataset uploads over HTTP on real processes: store, refuse, delete, train, predict held-out."""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from app.db import make_engine
from app.models import Blob, BlobChunk, Dataset
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
from tests.harness import Stack, plain_python

pytestmark = pytest.mark.integration

# A second API on the stack's database with small limits, for the uploads that must be refused.
LIMITS = {"TRAINERY_MAX_UPLOAD_BYTES": "300000", "TRAINERY_MAX_UNPACKED_BYTES": "3000000",
          "TRAINERY_MAX_UPLOAD_FILES": "500"}


def upload(client: httpx.Client, filename: str, payload: bytes, **fields: str) -> httpx.Response:
    return client.post("/v1/datasets", files={"file": (filename, payload)}, data=fields)


def uploaded(client: httpx.Client, filename: str, payload: bytes, **fields: str) -> dict[str, Any]:
    r = upload(client, filename, payload, **fields)
    assert r.status_code in (200, 201), r.text
    return r.json()  # type: ignore[no-any-return]


def row_counts(stack: Stack) -> dict[str, int]:
    """Rows in the tables an upload writes to."""
    engine = make_engine(stack.database_url)
    try:
        with engine.connect() as conn:
            return {model.__tablename__: conn.scalar(select(func.count()).select_from(model)) or 0
                    for model in (Blob, BlobChunk, Dataset)}
    finally:
        engine.dispose()


def train_spec(framework: str, ds_id: str, name: str, model: dict[str, Any] | None = None,
               epochs: int = 5, **extra: Any) -> dict[str, Any]:
    return {"name": name, "framework": framework, "dataset": {"id": ds_id},
            "model": model or {"preset": "mlp"},
            "training": {"epochs": epochs, "batch_size": 32,
                         "optimizer": {"name": "adam", "lr": 0.01}},
            **extra}


CONV = {"layers": [{"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"},
                   {"type": "maxpool2d"}, {"type": "flatten"},
                   {"type": "dense", "units": 32, "activation": "relu"}]}


@pytest.fixture(scope="module")
def limited(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    api = Stack(stack.database_url, tmp_path_factory.mktemp("limited-api"), extra_env=LIMITS)
    try:
        api.start_api()
        yield api
    finally:
        api.stop()


# -- storing and describing ------------------------------------------------------------


def test_upload_is_content_addressed_and_listed(stack: Stack) -> None:
    x, y = blobs(120, seed=11)
    payload = npz_bytes(x=x, y=y, x_val=x[:20], y_val=y[:20])
    first = upload(stack.client, "points.npz", payload, name="points")
    assert first.status_code == 201, first.text
    ds = first.json()
    assert first.headers["Location"] == f"/v1/datasets/{ds['id']}"
    assert ds["id"].startswith("ds_") and ds["source"] == "upload" and ds["format"] == "npz"
    assert (ds["task"], ds["n_samples"], ds["n_val"], ds["sample_shape"], ds["dtype"]) == (
        "classification", 120, 20, [4], "float32")
    assert ds["num_classes"] == 3 and ds["class_names"] == ["0", "1", "2"]
    assert ds["size_bytes"] == len(payload) and len(ds["sha256"]) == 64

    counts = row_counts(stack)
    again = upload(stack.client, "renamed.npz", payload, name="another name")
    assert again.status_code == 200 and again.json()["id"] == ds["id"]
    assert row_counts(stack) == counts  # nothing stored twice
    as_regression = uploaded(stack.client, "points.npz", npz_bytes(x=x, y=y.astype(np.float32)))
    assert as_regression["task"] == "regression" and as_regression["id"] != ds["id"]

    listed = stack.client.get("/v1/datasets").json()["data"]
    ids = [d["id"] for d in listed]
    assert ds["id"] in ids and "iris" in ids and "synthetic" in ids
    assert stack.client.get(f"/v1/datasets/{ds['id']}").json() == ds
    missing = stack.client.get("/v1/datasets/ds_doesnotexist")
    assert missing.status_code == 404 and missing.json()["error"] == "dataset_not_found"
    assert stack.client.delete("/v1/datasets/iris").status_code == 409


def test_csv_and_zip_uploads_are_described(stack: Stack) -> None:
    payload, *_ = flower_csv(60, seed=3)
    ds = uploaded(stack.client, "flowers.csv", payload, target="species")
    assert ds["class_names"] == ["setosa", "versicolor", "virginica"]
    assert ds["feature_names"] == ["petal", "sepal", "stem"] and ds["sample_shape"] == [3]
    x, y = shape_images(2, size=12, mode="L")
    images = uploaded(stack.client, "shapes.zip", image_zip(x, y, root="shapes"))
    assert images["sample_shape"] == [12, 12, 1] and images["dtype"] == "uint8"
    assert images["class_names"] == list(SHAPES) and images["n_samples"] == 6


# -- refusing bad uploads ------------------------------------------------------------------


def _png() -> bytes:
    x, _ = shape_images(1, size=8)
    return encode_image(x[0])


def _corrupt_npz() -> bytes:
    x, y = blobs(100)
    payload = bytearray(npz_bytes(x=x, y=y))
    start = payload.index(b"x.npy") + 300
    payload[start:start + 32] = bytes(32)
    return bytes(payload)


def _pickled_npz() -> bytes:
    return npz_bytes(x=np.zeros((2, 2)), y=np.array([{"a": 1}, {"b": 2}], dtype=object))


BAD_UPLOADS: dict[str, tuple[str, Callable[[], bytes], dict[str, str], int, str]] = {
    "over the size limit": ("big.npz", lambda: bytes(400_000), {}, 413,
                            "TRAINERY_MAX_UPLOAD_BYTES"),
    "empty file": ("empty.npz", lambda: b"", {}, 422, "the file is empty"),
    "truncated npz": ("cut.npz", lambda: npz_bytes(x=np.zeros((50, 4)), y=np.arange(50))[:900],
                      {}, 422, "not a valid npz"),
    "corrupt npz": ("bad.npz", _corrupt_npz, {}, 422, "corrupt"),
    "pickled npz": ("pickle.npz", _pickled_npz, {}, 422, "pickle"),
    "x and y lengths differ": ("xy.npz", lambda: npz_bytes(x=np.zeros((5, 2)), y=np.arange(4)),
                               {}, 422, "x has 5 samples but y has 4"),
    "NaN values": ("nan.npz", lambda: npz_bytes(x=np.array([[np.nan, 1.0], [0.0, 1.0]]),
                                                y=np.array([0, 1])), {}, 422, "NaN or infinite"),
    "infinite values": ("inf.csv", lambda: csv_bytes(["a", "t"], [["inf", "x"], ["1", "y"]]),
                        {"target": "t"}, 422, "NaN or infinite"),
    "ragged CSV": ("ragged.csv", lambda: csv_bytes(["a", "b", "t"], [[1, 2, "x"], [1, "y"]]),
                   {"target": "t"}, 422, "line 3 has 2 fields but the header has 3"),
    "non-numeric CSV feature": ("words.csv",
                                lambda: csv_bytes(["a", "t"], [["red", "x"], ["1", "y"]]),
                                {"target": "t"}, 422, "column 'a' must be numeric"),
    "zip path escaping its folder": ("evil.zip", lambda: zip_bytes(
        {"cat/1.png": _png(), "../dog/2.png": _png()}), {}, 422, "escapes its folder"),
    "zip bomb": ("bomb.zip", lambda: zip_bytes({"cat/1.png": _png(), "dog/1.png": _png(),
                                                "dog/2.png": bytes(20_000_000)}),
                 {}, 413, "TRAINERY_MAX_UNPACKED_BYTES"),
    "undecodable image": ("junk.zip", lambda: zip_bytes(
        {"cat/1.png": _png(), "dog/2.png": b"\x89PNG\r\n\x1a\nnot really"}), {}, 422,
        "'dog/2.png' does not decode"),
    "empty class folder": ("empty-class.zip", lambda: zip_bytes(
        {"cat/1.png": _png(), "dog/2.png": _png()}, dirs=["eel"]), {}, 422,
        "class folder 'eel' has no images"),
    "single class": ("one.zip", lambda: zip_bytes({"cat/1.png": _png(), "cat/2.png": _png()}),
                     {}, 422, "at least two"),
    "CSV without target": ("flowers.csv", lambda: flower_csv(10)[0], {}, 422,
                           "form field 'target'"),
    "unknown format": ("data.parquet", lambda: b"PAR1", {}, 422, "cannot tell the format"),
}


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_refused_and_leaves_nothing_behind(limited: Stack, case: str) -> None:
    filename, make, fields, status, words = BAD_UPLOADS[case]
    before = row_counts(limited)
    r = upload(limited.client, filename, make(), **fields)
    assert r.status_code == status, r.text
    body = r.json()
    text = body["detail"] if isinstance(body["detail"], str) else body["detail"][0]["message"]
    assert words in text, body
    assert row_counts(limited) == before


def test_a_streamed_upload_is_cut_off_at_the_limit(limited: Stack) -> None:
    # Chunked transfer: no Content-Length to refuse up front, so the body is counted as it comes.
    before = row_counts(limited)
    boundary = "trainery-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.npz\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range(40):
            yield bytes(10_000)
        yield f"\r\n--{boundary}--\r\n".encode()

    r = limited.client.post("/v1/datasets", content=body(),
                            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413 and "TRAINERY_MAX_UPLOAD_BYTES" in r.json()["detail"]
    assert row_counts(limited) == before


def test_upload_must_be_multipart_with_a_file(limited: Stack) -> None:
    r = limited.client.post("/v1/datasets", json={"file": "x"})
    assert r.status_code == 422 and r.json()["detail"][0]["path"] == "file"
    r = limited.client.post("/v1/datasets", data={"name": "no file"}, files={"other": ("a", b"1")})
    assert r.status_code == 422 and r.json()["detail"][0]["path"] == "file"


# -- jobs and uploaded datasets ---------------------------------------------------------------


def test_submit_checks_the_dataset_id_and_task(stack: Stack) -> None:
    r = stack.client.post("/v1/jobs", json=train_spec("pytorch", "ds_unknown", "nope"))
    assert r.status_code == 422
    assert [p["path"] for p in r.json()["detail"]] == ["dataset.id"]
    x, y = blobs(50, seed=5)
    ds = uploaded(stack.client, "task.npz", npz_bytes(x=x, y=y))
    r = stack.client.post("/v1/jobs", json=train_spec("pytorch", ds["id"], "wrong-task",
                                                      task="regression"))
    assert r.status_code == 422 and r.json()["detail"][0]["path"] == "task"
    assert "classification dataset" in r.json()["detail"][0]["message"]


def test_delete_is_refused_while_a_job_waits_on_the_dataset(stack: Stack) -> None:
    x, y = blobs(40, seed=6)
    ds = uploaded(stack.client, "doomed.npz", npz_bytes(x=x, y=y))
    before = row_counts(stack)
    parked = train_spec("pytorch", ds["id"], "parked",
                        resources={"queue": f"parked-{uuid.uuid4().hex[:8]}"})
    job = stack.submit(parked)
    r = stack.client.delete(f"/v1/datasets/{ds['id']}")
    assert r.status_code == 409 and job["id"] in r.json()["detail"], r.text
    stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert stack.client.delete(f"/v1/datasets/{ds['id']}").status_code == 204
    after = row_counts(stack)
    assert after["datasets"] == before["datasets"] - 1 and after["blobs"] == before["blobs"] - 1
    assert stack.client.get(f"/v1/datasets/{ds['id']}").status_code == 404
    assert stack.client.delete(f"/v1/datasets/{ds['id']}").status_code == 404
    r = stack.client.post("/v1/jobs", json=train_spec("pytorch", ds["id"], "too-late"))
    assert r.status_code == 422 and r.json()["detail"][0]["path"] == "dataset.id"


def test_a_job_trains_on_an_upload_through_the_worker_cache(stack: Stack) -> None:
    x, y = blobs(150, seed=8)
    ds = uploaded(stack.client, "cached.npz", npz_bytes(x=x, y=y))
    first = stack.submit(train_spec("pytorch", ds["id"], "cache-1", epochs=2))
    second = stack.submit(train_spec("pytorch", ds["id"], "cache-2", epochs=2))
    for job in (first, second):
        done = stack.wait(job["id"])
        assert done["status"] == "succeeded", done["error"]
    cached = list((stack.data_dir / "dataset-cache").glob("*.npz"))
    assert len(cached) >= 1
    card = stack.client.get(f"/v1/jobs/{second['id']}/model/card").json()
    assert card["dataset"] == ds["id"] and card["class_names"] == ["0", "1", "2"]
    assert card["n_train"] == 120 and card["n_val"] == 30  # the seeded 0.2 split


# -- three formats, two frameworks, held-out accuracy ------------------------------------------


class Uploads:
    """The three uploaded datasets, their held-out data (never uploaded), and the jobs on them."""

    def __init__(self, stack: Stack) -> None:
        x, y = blobs(300, seed=21)
        x_val, y_val = blobs(60, seed=22)
        x_test, y_test = blobs(200, seed=23)
        self.npz = uploaded(stack.client, "blobs.npz",
                            npz_bytes(x=x, y=y, x_val=x_val, y_val=y_val))
        csv_payload, *_ = flower_csv(300, seed=31)
        _, cx_test, cy_test, names = flower_csv(200, seed=32)
        self.csv = uploaded(stack.client, "flowers.csv", csv_payload, target="species")
        ix, iy = shape_images(30, size=16, seed=41)
        ix_test, iy_test = shape_images(10, size=16, seed=42)
        self.zip = uploaded(stack.client, "shapes.zip", image_zip(ix, iy))
        self.held_out = {
            "npz": (x_test, np.array([str(v) for v in y_test])),
            "csv": (cx_test, np.array([names[v] for v in cy_test])),
            "zip": (ix_test, np.array([SHAPES[v] for v in iy_test])),
        }
        self.jobs: dict[tuple[str, str], str] = {}
        for framework in ("pytorch", "keras"):
            for fmt, ds in (("npz", self.npz), ("csv", self.csv), ("zip", self.zip)):
                model = CONV if fmt == "zip" else None
                spec = train_spec(framework, ds["id"], f"{fmt}-{framework}", model, epochs=5)
                self.jobs[(fmt, framework)] = stack.submit(spec)["id"]


@pytest.fixture(scope="module")
def formats_trained(stack: Stack) -> Uploads:
    return Uploads(stack)


PREDICT = """
import json, numpy as np
{load}
out = {{}}
for fmt in ("npz", "csv", "zip"):
    d = np.load(fmt + "-heldout.npz")
    logits = predict(fmt + "-{suffix}", d["x"])
    names = json.load(open(fmt + "-classes.json"))
    out[fmt] = float((np.array(names)[logits.argmax(1)] == d["y"]).mean())
print(json.dumps(out))
"""
LOADERS = {
    "pytorch": ("model.pt", "torch", (
        "import torch\n"
        "def predict(path, x):\n"
        "    m = torch.jit.load(path)\n"
        "    return m(torch.from_numpy(x)).detach().numpy()\n")),
    "keras": ("model.keras", "keras", (
        "import keras\n"
        "def predict(path, x):\n"
        "    m = keras.models.load_model(path, safe_mode=True)\n"
        "    return np.asarray(m.predict(x, verbose=0))\n")),
}


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
@pytest.mark.parametrize("framework", ["pytorch", "keras"])
def test_models_trained_on_uploads_predict_held_out_data(
        stack: Stack, formats_trained: Uploads, framework: str, tmp_path: Path) -> None:
    if importlib.util.find_spec(LOADERS[framework][1]) is None:
        pytest.skip(f"{framework} is not installed")
    suffix, module, load = LOADERS[framework]
    for fmt, ds in (("npz", formats_trained.npz), ("csv", formats_trained.csv),
                    ("zip", formats_trained.zip)):
        job = stack.wait(formats_trained.jobs[(fmt, framework)], timeout=300)
        assert job["status"] == "succeeded", (fmt, job["error"])
        model = stack.client.get(f"/v1/jobs/{job['id']}/model")
        assert model.status_code == 200
        (tmp_path / f"{fmt}-{suffix}").write_bytes(model.content)
        card = stack.client.get(f"/v1/jobs/{job['id']}/model/card").json()
        assert card["class_names"] == ds["class_names"]
        assert card["input"]["shape"] == [None, *ds["sample_shape"]]
        assert ("uint8" in card["input"]["dtypes"]) == (fmt == "zip")
        if fmt == "npz":  # the upload's own x_val and y_val are the validation split
            assert (card["n_train"], card["n_val"]) == (300, 60)
        x, labels = formats_trained.held_out[fmt]
        np.savez(tmp_path / f"{fmt}-heldout.npz", x=x, y=labels)
        (tmp_path / f"{fmt}-classes.json").write_text(json.dumps(card["class_names"]))
    accuracy = json.loads(plain_python(PREDICT.format(load=load, suffix=suffix), tmp_path,
                                       module).strip().splitlines()[-1])
    assert accuracy["npz"] >= 0.9 and accuracy["csv"] >= 0.9 and accuracy["zip"] >= 0.9, accuracy
