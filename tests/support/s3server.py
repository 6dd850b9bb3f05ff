"""An S3-compatible server on 127.0.0.1 for tests: moto's server mode, with request signatures checked.

``S3Server`` starts ``ThreadedMotoServer`` on an ephemeral port, makes an IAM user allowed to read and
write S3 and its access key (``access_key``/``secret_key``), then turns moto's authentication on: from
then on every request must carry a valid SigV4 signature of an existing key (a wrong secret gets
``SignatureDoesNotMatch``, an unknown key ``InvalidAccessKeyId``). ``CuttingProxy`` sits in front of
any TCP server and cuts the first answers that carry more than ``cut_after`` bytes, mid-body, as a
dropped connection would.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


class S3Server:
    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint = ""
        self.access_key = ""
        self.secret_key = ""
        self._saved_auth: float | None = None

    def start(self) -> S3Server:
        from moto import settings

        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        admin = self.client("admin", "admin", "iam")
        user = f"cdi-{os.urandom(4).hex()}"  # moto's state is the process's: another server sees earlier users
        admin.create_user(UserName=user)
        admin.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(POLICY))
        key = admin.create_access_key(UserName=user)["AccessKey"]
        self.access_key, self.secret_key = key["AccessKeyId"], key["SecretAccessKey"]
        self._saved_auth = settings.INITIAL_NO_AUTH_ACTION_COUNT
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # every request from now on is authenticated
        return self

    def stop(self) -> None:
        from moto import settings

        if self._saved_auth is not None:
            settings.INITIAL_NO_AUTH_ACTION_COUNT = self._saved_auth
        self._server.stop()

    def client(self, key: str | None = None, secret: str | None = None, service: str = "s3") -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=key or self.access_key, aws_secret_access_key=secret or self.secret_key)

    def put(self, bucket: str, key: str, path: Path) -> str:
        """Upload ``path`` as ``bucket/key`` (the bucket made when missing); returns its path-style URL."""
        s3 = self.client()
        if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        s3.upload_file(str(path), bucket, key)
        return self.url(bucket, key)

    def url(self, bucket: str, key: str, endpoint: str | None = None) -> str:
        return f"{endpoint or self.endpoint}/{bucket}/{key}"

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class CuttingProxy:
    """A TCP proxy to ``port`` on 127.0.0.1 that drops the first ``cuts`` connections whose answers
    grow past ``cut_after`` bytes, right there (mid-body)."""

    def __init__(self, port: int, *, cut_after: int, cuts: int = 1) -> None:
        self.target = port
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.cut = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._stopped = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, answers: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if answers and sent + len(data) > self.cut_after:
                    with self._lock:
                        cut = self.cuts_left > 0
                        if cut:
                            self.cuts_left -= 1
                            self.cut += 1
                    if cut:
                        dst.sendall(data[: max(0, self.cut_after - sent)])
                        break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


@pytest.fixture(scope="module", name="s3_server")
def s3_server_fixture() -> Iterator[S3Server]:
    with S3Server() as server:
        yield server
