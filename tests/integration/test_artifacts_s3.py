"""Artifacts in a real S3-compatible server (SeaweedFS): multipart, integrity, deletion,
presigned downloads, migration both ways, and a whole job through a real stack."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import open_store
from app.artifacts.store import ObjectBlobStore
from app.blobstore import BlobMissing, BlobStore
from app.db import make_engine, make_sessionmaker, transaction
from app.models import Blob, BlobChunk, Checkpoint, Job, JobEvent
from app.services import artifact_migration
from app.settings import Settings
from bench.s3server import SeaweedServer
from tests.dataset_files import blobs as point_blobs
from tests.dataset_files import npz_bytes
from tests.harness import Stack

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_settings(seaweed: SeaweedServer, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings on a prefix of its own; credentials where boto3 looks for them."""
    env = seaweed.env(prefix=f"t{uuid.uuid4().hex[:8]}")
    for name, value in env.items():
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    return Settings(artifact_url=env["TRAINERY_ARTIFACT_URL"],
                    s3_endpoint_url=seaweed.endpoint, s3_part_bytes=5 * MiB)


def _store(factory: sessionmaker[Session], settings: Settings) -> ObjectBlobStore:
    store = open_store(factory, settings)
    assert isinstance(store, ObjectBlobStore)
    return store


def _pieces(total: int, seed: int) -> Iterator[bytes]:
    """Deterministic incompressible bytes in 1 MiB pieces."""
    for i in range(0, total, MiB):
        n = min(MiB, total - i)
        yield (hashlib.sha256(f"{seed}:{i}".encode()).digest() * (n // 32 + 1))[:n]


def _keys(store: ObjectBlobStore) -> set[str]:
    return set(store.objects.list_urls())


def _locations(factory: sessionmaker[Session]) -> set[str]:
    with factory() as session:
        return {u for u in session.scalars(select(Blob.location)) if u is not None}


def test_large_blob_goes_up_in_parts_and_comes_back_whole(
        factory: sessionmaker[Session], s3_settings: Settings) -> None:
    store = _store(factory, s3_settings)
    total = 12 * MiB + 5
    expected = hashlib.sha256(b"".join(_pieces(total, 1))).hexdigest()
    info = store.write(_pieces(total, 1), owner="alice", kind="checkpoint")
    assert (info.size, info.sha256) == (total, expected)
    assert _keys(store) == {info.location}
    bucket, key = info.location.removeprefix("s3://").split("/", 1)  # type: ignore[union-attr]
    head = store.objects.client.head_object(Bucket=bucket, Key=key)
    assert head["ContentLength"] == total and head["ETag"].strip('"').endswith("-3")  # 3 parts
    with factory() as session:
        assert session.scalar(select(BlobChunk.blob_id)) is None  # nothing in SQL but the row
    assert hashlib.sha256(store.read_bytes(info.id)).hexdigest() == expected
    url = store.presign(info, filename="model.pt", media_type="application/octet-stream")
    assert url is not None
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and hashlib.sha256(fetched.content).hexdigest() == expected
    assert 'filename="model.pt"' in fetched.headers["content-disposition"]
    store.delete(info.id)
    assert _keys(store) == set()
    with pytest.raises(BlobMissing):
        store.info(info.id)


def test_a_rolled_back_row_takes_its_object_with_it(
        factory: sessionmaker[Session], s3_settings: Settings) -> None:
    store = _store(factory, s3_settings)
    with pytest.raises(RuntimeError), transaction(factory) as session:
        store.add_small(session, b"never referenced", owner="alice", kind="checkpoint")
        raise RuntimeError("the checkpoint's row did not go in")
    assert _keys(store) == set()
    with transaction(factory) as session:
        kept = store.add_small(session, b"referenced", owner="alice", kind="checkpoint")
    assert _keys(store) == {kept.location}


def _running_job(factory: sessionmaker[Session]) -> str:
    job_id = f"job_{uuid.uuid4().hex[:12]}"
    with transaction(factory) as session:
        session.add(Job(id=job_id, owner="alice", name="t", framework="pytorch",
                        status="running", attempt=1, queue="default", spec={}))
    return job_id


def test_resume_skips_a_missing_or_tampered_checkpoint_object(
        factory: sessionmaker[Session], s3_settings: Settings) -> None:
    from workers.reporting import JobReporter

    store = _store(factory, s3_settings)
    job_id = _running_job(factory)
    reporter = JobReporter(factory, store, job_id, 1)
    for epoch in (1, 2, 3):
        reporter.save_checkpoint(epoch, f"weights of epoch {epoch}".encode() * 100, {},
                                 keep_last=3)
    with factory() as session:
        urls: dict[int, str] = dict(session.execute(  # type: ignore[arg-type]
            select(Checkpoint.epoch, Blob.location).join(Blob, Blob.id == Checkpoint.blob_id)
            .where(Checkpoint.job_id == job_id)).all())
    client = store.objects.client
    bucket, key3 = urls[3].removeprefix("s3://").split("/", 1)
    client.delete_object(Bucket=bucket, Key=key3)
    key2 = urls[2].removeprefix("s3://").split("/", 1)[1]
    client.put_object(Bucket=bucket, Key=key2, Body=b"not what was written" * 100)

    loaded = reporter.latest_checkpoint()
    assert loaded is not None and loaded.epoch == 1
    assert loaded.payload == b"weights of epoch 1" * 100
    with factory() as session:
        messages = list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)))
    assert any("epoch 3 is unusable" in m and "missing" in m for m in messages), messages
    assert any("epoch 2 is unusable" in m and "sha256" in m for m in messages), messages


def test_pruned_checkpoints_lose_their_objects(
        factory: sessionmaker[Session], s3_settings: Settings) -> None:
    from workers.reporting import JobReporter

    store = _store(factory, s3_settings)
    reporter = JobReporter(factory, store, _running_job(factory), 1)
    big = b"x" * (2 * s3_settings.blob_chunk_bytes)  # the multi-chunk path too
    for epoch, payload in enumerate([b"small"] * 3 + [big] * 2, start=1):
        reporter.save_checkpoint(epoch, payload, {}, keep_last=2)
    assert len(_keys(store)) == 2 and _keys(store) == _locations(factory)


def test_migration_moves_every_blob_to_the_object_store_and_back(
        factory: sessionmaker[Session], s3_settings: Settings) -> None:
    sql = BlobStore(factory, 1024 * 64)
    payloads = [b"", b"small", b"".join(_pieces(3 * MiB + 7, 2))]
    infos = [sql.write_bytes(p, owner="alice", kind="dataset") for p in payloads]
    store = ObjectBlobStore(factory, _store(factory, s3_settings).objects, 1024 * 64)

    moved = artifact_migration.to_objects(factory, store)
    assert (moved.blobs, moved.bytes) == (3, sum(map(len, payloads)))
    assert _keys(store) == _locations(factory) and len(_keys(store)) == 3
    with factory() as session:
        assert session.scalar(select(BlobChunk.blob_id)) is None
    assert [store.read_bytes(i.id) for i in infos] == payloads
    assert artifact_migration.to_objects(factory, store).blobs == 0  # a rerun has nothing left

    moved = artifact_migration.to_sql(factory, store)
    assert moved.blobs == 3 and _keys(store) == set() and _locations(factory) == set()
    assert [sql.read_bytes(i.id) for i in infos] == payloads


# -- a whole job through a real stack ---------------------------------------------------


@pytest.fixture
def s3_stack(database_url: str, tmp_path: Path, seaweed: SeaweedServer) -> Iterator[Stack]:
    stack = Stack(database_url, tmp_path,
                  extra_env=seaweed.env(prefix=f"stack{uuid.uuid4().hex[:8]}"))
    try:
        stack.start_api()
        stack.start_worker("w1")
        yield stack
    finally:
        stack.stop()


def _train_spec(ds_id: str) -> dict[str, Any]:
    return {"name": "s3", "framework": "pytorch", "dataset": {"id": ds_id},
            "model": {"preset": "mlp"},
            "training": {"epochs": 4, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01}},
            "checkpoint": {"every_epochs": 1, "keep_last": 2}}


def test_a_job_keeps_its_artifacts_in_s3_and_leaves_no_orphans(
        s3_stack: Stack, seaweed: SeaweedServer) -> None:
    prefix = s3_stack.env["TRAINERY_ARTIFACT_URL"].split("/", 3)[3] + "/"
    x, y = point_blobs(200, seed=5)
    upload = s3_stack.client.post("/v1/datasets", files={"file": ("p.npz", npz_bytes(x=x, y=y))})
    assert upload.status_code == 201, upload.text
    ds_id = upload.json()["id"]
    job = s3_stack.submit(_train_spec(ds_id))
    assert s3_stack.wait(job["id"])["status"] == "succeeded"
    ckpts = s3_stack.client.get(f"/v1/jobs/{job['id']}/checkpoints").json()
    assert [c["epoch"] for c in ckpts] == [3, 4]

    # The model: a 307 to a presigned URL that carries our sha256 in a header.
    r = s3_stack.client.get(f"/v1/jobs/{job['id']}/model", follow_redirects=False)
    assert r.status_code == 307, r.text
    sha = r.headers["X-Trainery-SHA256"]
    assert r.headers["ETag"] == f'"{sha}"'
    model = httpx.get(r.headers["Location"])
    assert model.status_code == 200 and hashlib.sha256(model.content).hexdigest() == sha
    assert int(r.headers["X-Trainery-Size"]) == len(model.content)

    # Through the API instead, for clients that cannot follow a redirect.
    (s3_stack.data_dir / "relay").mkdir()
    relay = Stack(s3_stack.database_url, s3_stack.data_dir / "relay",
                  extra_env={**{k: v for k, v in s3_stack.env.items()
                                if k.startswith(("TRAINERY_ARTIFACT", "TRAINERY_S3", "AWS_"))},
                             "TRAINERY_MODEL_DOWNLOAD": "stream"})
    try:
        relay.start_api()
        streamed = relay.client.get(f"/v1/jobs/{job['id']}/model", follow_redirects=False)
    finally:
        relay.stop()
    assert streamed.status_code == 200 and streamed.content == model.content

    assert s3_stack.client.delete(f"/v1/datasets/{ds_id}").status_code == 204
    engine = make_engine(s3_stack.database_url)
    try:
        factory = make_sessionmaker(engine)
        with factory() as session:
            assert session.scalar(select(BlobChunk.blob_id)) is None
            kinds = sorted(session.scalars(select(Blob.kind)))
        locations = _locations(factory)
    finally:
        engine.dispose()
    keys = {f"s3://{seaweed.bucket}/{k}" for k in seaweed.keys(prefix)}
    assert keys == locations, "objects without rows, or rows without objects"
    assert kinds.count("checkpoint") == 2 and "dataset" not in kinds
    assert any(k.startswith("model.") for k in kinds)


def test_the_embedded_default_needs_no_object_store() -> None:
    assert not os.environ.get("TRAINERY_ARTIFACT_URL")
    assert type(open_store(make_sessionmaker(make_engine("sqlite://")), Settings())) is BlobStore


class _Recording(httpx.HTTPTransport):
    """A real transport that remembers which headers went to which host."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, httpx.Headers]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append((f"{request.url.host}:{request.url.port}", request.headers))
        return super().handle_request(request)


def test_the_sdk_and_the_cli_download_a_model_through_the_presigned_redirect(
        s3_stack: Stack, seaweed: SeaweedServer, tmp_path: Path) -> None:
    import torch
    from typer.testing import CliRunner

    from app.cli import server_app
    from trainery_client import Client
    from trainery_client.cli import app

    created = CliRunner().invoke(server_app, ["keys", "create", "--owner", "s3dl", "--json"],
                                 env={"TRAINERY_DATABASE_URL": s3_stack.database_url})
    assert created.exit_code == 0, created.output
    token = json.loads(created.stdout)["token"]
    x, y = point_blobs(200, seed=6)
    (tmp_path / "p.npz").write_bytes(npz_bytes(x=x, y=y))
    transport = _Recording()
    with Client(s3_stack.url, token=token, transport=transport) as client:
        dataset = client.upload_dataset(tmp_path / "p.npz")
        job_id = client.submit(_train_spec(dataset.id)).id
        assert client.wait(job_id, timeout=300).status == "succeeded"
        r = client._http.get(f"/v1/jobs/{job_id}/model")
        assert r.status_code == 307, r.text
        sha = r.headers["X-Trainery-SHA256"]
        transport.sent.clear()
        saved = client.download_model(job_id, tmp_path / "sdk")
    assert saved.sha256 == sha and saved.size == int(r.headers["X-Trainery-Size"])
    assert hashlib.sha256(saved.path.read_bytes()).hexdigest() == sha
    api_host = httpx.URL(s3_stack.url)
    hosts = [(host, "authorization" in headers) for host, headers in transport.sent]
    store_host = httpx.URL(seaweed.endpoint)
    assert hosts == [(f"{api_host.host}:{api_host.port}", True),
                     (f"{store_host.host}:{store_host.port}", False)]
    assert torch.jit.load(str(saved.path))(torch.from_numpy(x[:3]).float()).shape[0] == 3

    out = CliRunner().invoke(app, ["--url", s3_stack.url, "download", job_id, "--json",
                                   "-o", str(tmp_path / "cli.pt")], env={"TRAINERY_TOKEN": token})
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["sha256"] == sha
    assert (tmp_path / "cli.pt").read_bytes() == saved.path.read_bytes()
    assert torch.jit.load(str(tmp_path / "cli.pt"))(torch.from_numpy(x[:3]).float()).shape[0] == 3


def test_trainery_artifacts_migrate_moves_a_jobs_blobs_to_sql_and_back(
        s3_stack: Stack, seaweed: SeaweedServer, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import server_app
    from trainery_client import Client

    prefix = s3_stack.env["TRAINERY_ARTIFACT_URL"].split("/", 3)[3] + "/"
    env = {k: v for k, v in s3_stack.env.items() if k.startswith(("TRAINERY_", "AWS_"))}
    x, y = point_blobs(200, seed=7)
    upload = s3_stack.client.post("/v1/datasets", files={"file": ("p.npz", npz_bytes(x=x, y=y))})
    assert upload.status_code == 201, upload.text
    job = s3_stack.submit({**_train_spec(upload.json()["id"]),
                           "training": {"epochs": 2, "batch_size": 32}})
    assert s3_stack.wait(job["id"])["status"] == "succeeded"
    sha = s3_stack.client.get(f"/v1/jobs/{job['id']}/model").headers["X-Trainery-SHA256"]
    in_s3 = len(seaweed.keys(prefix))
    assert in_s3 >= 3  # the dataset, checkpoints, the model

    def migrate_to(target: str) -> dict[str, Any]:
        out = CliRunner().invoke(server_app, ["artifacts", "migrate", "--to", target, "--json"],
                                 env=env)
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def download(name: str) -> int:
        status = s3_stack.client.get(f"/v1/jobs/{job['id']}/model",
                                     follow_redirects=False).status_code
        with Client(s3_stack.url, token="") as client:
            saved = client.download_model(job["id"], tmp_path / name)
        assert saved.sha256 == sha
        assert hashlib.sha256(saved.path.read_bytes()).hexdigest() == sha
        return status

    moved = migrate_to("sql")
    assert moved["to"] == "sql" and moved["blobs"] == in_s3 and moved["bytes"] > 0
    assert seaweed.keys(prefix) == []
    assert download("from-sql.pt") == 200  # kept in SQL: the API streams it

    assert migrate_to("s3")["blobs"] == in_s3
    assert len(seaweed.keys(prefix)) == in_s3
    assert download("from-s3.pt") == 307
    assert migrate_to("s3")["blobs"] == 0  # nothing left to move

    broken = CliRunner().invoke(server_app, ["artifacts", "migrate", "--to", "s3"],
                                env={**env, "TRAINERY_ARTIFACT_URL": ""})
    assert broken.exit_code != 0 and "TRAINERY_ARTIFACT_URL" in broken.output
