"""Upload benchmark: the same 2 GiB image (about 40% data; raw and qcow2) uploaded into a volume, in one run.

- cdi + curl: ``cdi serve``, a DataVolume with ``source.upload``, an UploadTokenRequest, then curl POSTing
  the file to the upload proxy's sync path as CDI's doc/upload.md shows (the answer comes once the volume
  is complete and verified), then ``sync``.
- cdi image-upload: the same through ``cdi image-upload dv`` (create, wait, token, upload, processing), and
  with ``--sparse`` (only the data extents are sent; qcow2 read in place, no conversion on the server).
- ovirt-imageio: its server (file backend, TLS) on 127.0.0.1 and its Python client's ``upload()`` into a
  raw file of the same size, then ``sync``.

For each: wall seconds, MB/s of image size, peak RSS of the server side (the upload server process
tree for cdi, the imageio daemon for ovirt-imageio), peak scratch bytes, bytes sent over the wire, and
whether the volume's digest equals the source's. The page cache is dropped before each run when
possible. Run: ``.venv/bin/python bench/bench_upload.py [--size-mib 2048]``; writes bench/out/upload.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from importer.digest import volume_digest  # noqa: E402

OUT = REPO / "bench" / "out" / "upload"
PY = sys.executable


@dataclass
class Result:
    case: str
    image: str
    wall: float
    size: int
    peak_rss: int
    scratch: int
    sent: int
    verified: bool
    server_cpu: float = 0.0
    proxy_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.size / self.wall / 1e6


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children so far (the clients it ran)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def make_images(size: int) -> tuple[Path, Path]:
    OUT.mkdir(parents=True, exist_ok=True)
    raw, qcow2 = OUT / f"disk-{size >> 20}M.raw", OUT / f"disk-{size >> 20}M.qcow2"
    if not raw.exists():
        rng = random.Random(7)
        with open(raw, "wb") as f:
            for _ in range(size >> 20):
                if rng.random() < 0.4:
                    f.write(rng.randbytes(1 << 20))
                else:
                    f.seek(1 << 20, os.SEEK_CUR)
            f.truncate(size)
    if not qcow2.exists():
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], check=True)
    return raw, qcow2


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def tree_rss(root: int) -> int:
    total = 0
    for pid in tree_pids(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def dir_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                pass
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """Peak RSS of a process tree and peak allocated bytes of a scratch directory, every 20 ms; the CPU
    seconds the tree spent meanwhile (each process's last figure seen, less what it had at the start), and
    the same for ``proxy`` (the process serving the upload proxy) when given."""

    def __init__(self, pid: Any, scratch: Any, proxy: int | None = None) -> None:
        self.pid, self.scratch, self.proxy = pid, scratch, proxy
        self.rss = self.scratch_peak = 0
        self._cpu_seen: dict[int, float] = {}
        self._proxy_start = cpu_seconds(proxy) if proxy else 0.0
        self.proxy_cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu(self) -> float:
        return sum(self._cpu_seen.values())

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            pid = self.pid() if callable(self.pid) else self.pid
            if pid:
                self.rss = max(self.rss, tree_rss(pid))
                for p in tree_pids(pid):
                    if p != self.proxy:
                        self._cpu_seen[p] = max(self._cpu_seen.get(p, 0.0), cpu_seconds(p))
            if self.proxy:
                self.proxy_cpu = cpu_seconds(self.proxy) - self._proxy_start
            scratch = self.scratch() if callable(self.scratch) else self.scratch
            if scratch is not None and scratch.exists():
                self.scratch_peak = max(self.scratch_peak, dir_bytes(scratch))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def expected_digest(raw: Path, size: int) -> str:
    return volume_digest(str(raw), size)


# -- cdi -------------------------------------------------------------------------------------------

class Cdi:
    def __init__(self) -> None:
        self.dir = OUT / "serve"
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.log = open(OUT / "serve.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([PY, "-m", "cdi.cli.main", "serve", "--data-dir", str(self.dir / "data"),
                                      "--port", "0", "--uploadproxy-port", "0", "--console-port", "0"],
                                     stdout=self.log, stderr=self.log, cwd=REPO)
        kubeconfig = self.dir / "data" / "kubeconfig"
        while not kubeconfig.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"cdi serve did not start; see {OUT / 'serve.log'}")
            time.sleep(0.1)
        from cdi.kube import Client
        from cdi.kube.kinds import CDICONFIG

        self.kubeconfig = kubeconfig
        self.client = Client.from_kubeconfig(str(kubeconfig))
        while not ((self.client.find(CDICONFIG, None, "config") or {}).get("status") or {}).get("uploadProxyURL"):
            time.sleep(0.1)
        self.url = self.client.get(CDICONFIG, None, "config")["status"]["uploadProxyURL"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()

    def create(self, name: str, size: int) -> None:
        from cdi.kube import DATAVOLUME

        self.client.create(DATAVOLUME, {"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
                                        "metadata": {"name": name, "namespace": "default"},
                                        "spec": {"source": {"upload": {}},
                                                 "storage": {"resources": {"requests": {"storage": str(size)}}}}})
        self.wait(name, "UploadReady")

    def wait(self, name: str, phase: str, timeout: float = 600) -> dict[str, Any]:
        from cdi.kube import DATAVOLUME

        deadline = time.monotonic() + timeout
        while True:
            dv = self.client.get(DATAVOLUME, "default", name)
            if (dv.get("status") or {}).get("phase") == phase:
                return dv
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not reach {phase}: {dv.get('status')}")
            time.sleep(0.05)

    def server_pid(self, name: str) -> int | None:
        from cdi.kube import POD

        pod = self.client.find(POD, "default", f"cdi-upload-{name}")
        cid = (((pod or {}).get("status") or {}).get("containerStatuses") or [{}])[0].get("containerID", "")
        return int(cid.removeprefix("local://")) if cid.startswith("local://") else None

    def workdir(self, name: str) -> Path | None:
        from cdi.kube import POD

        pod = self.client.find(POD, "default", f"cdi-upload-{name}")
        return self.dir / "data" / "pods" / pod["metadata"]["uid"] / "work" if pod else None

    def volume(self, name: str) -> Path:
        from cdi.kube import PVC

        pvc = self.client.get(PVC, "default", name)
        return Path(pvc["metadata"]["annotations"]["cdi.kubevirt.io/local-path"]) / "disk.img"

    def token(self, name: str) -> str:
        from cdi.kube.kinds import UPLOADTOKENREQUEST

        out = self.client.create(UPLOADTOKENREQUEST, {"apiVersion": "upload.cdi.kubevirt.io/v1beta1",
                                                      "kind": "UploadTokenRequest",
                                                      "metadata": {"name": name, "namespace": "default"},
                                                      "spec": {"pvcName": name}})
        return str(out["status"]["token"])

    def curl(self, name: str, image: Path, raw: Path, size: int) -> Result:
        self.create(name, size)
        token, pid, work = self.token(name), self.server_pid(name), self.workdir(name)
        drop_caches()
        before = children_cpu()
        with Sampler(pid, work, self.proc.pid) as s:
            start = time.monotonic()
            out = subprocess.run(["curl", "-sS", "--insecure", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}",
                                  "-H", f"Authorization: Bearer {token}", "-T", str(image), "-X", "POST",
                                  f"{self.url}/v1beta1/upload"], capture_output=True, text=True, check=True)
            subprocess.run(["sync"], check=True)
            wall = time.monotonic() - start
        code, sent = out.stdout.split()
        assert code == "200", out
        dv = self.wait(name, "Succeeded")
        digest = dv["metadata"]["annotations"]["cdi.kubevirt.io/storage.import.volumeDigest"]
        ok = digest == volume_digest(str(self.volume(name))) and \
            volume_digest(str(self.volume(name)), size) == expected_digest(raw, size)
        return Result("cdi + curl POST", image.suffix[1:], wall, size, s.rss, s.scratch_peak, int(sent), ok,
                      s.cpu, s.proxy_cpu, children_cpu() - before)

    def image_upload(self, name: str, image: Path, raw: Path, size: int, *, sparse: bool = False,
                     ready: bool = False) -> Result:
        """``cdi image-upload``; ``ready``: the DataVolume and its upload server exist before the clock
        starts (``--no-create``), so the figure is the upload alone, as ovirt-imageio's is."""
        from cdi.cli.sparse import body_length, data_extents

        if ready:
            self.create(name, size)
        drop_caches()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        before = children_cpu()
        with Sampler(lambda: self.server_pid(name), lambda: self.workdir(name), self.proc.pid) as s:
            start = time.monotonic()
            subprocess.run([PY, "-m", "cdi.cli.main", "image-upload", "dv", name, "--size", str(size),
                            "--image-path", str(image), "--insecure", *(["--sparse"] if sparse else []),
                            *(["--no-create"] if ready else [])],
                           env=env, check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(["sync"], check=True)
            wall = time.monotonic() - start
        ok = volume_digest(str(self.volume(name)), size) == expected_digest(raw, size)
        sent = body_length(data_extents(image)[1]) if sparse else image.stat().st_size
        case = "cdi image-upload" + (" --sparse" if sparse else "") + \
            (" (volume ready: upload only)" if ready else " (create+wait+upload)")
        return Result(case, image.suffix[1:], wall, size, s.rss, s.scratch_peak, sent, ok,
                      s.cpu, s.proxy_cpu, children_cpu() - before)


# -- ovirt-imageio ------------------------------------------------------------------------------------

class Imageio:
    def __init__(self) -> None:
        from cdi.controller.upload_tls import issue, new_ca

        self.dir = OUT / "imageio"
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "conf.d").mkdir(parents=True)
        ca = new_ca("bench-ca")
        cert, key = issue(*ca, "localhost", dns=("localhost",), ips=("127.0.0.1",))
        (self.dir / "ca.pem").write_bytes(ca[0])
        (self.dir / "cert.pem").write_bytes(cert)
        (self.dir / "key.pem").write_bytes(key)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.control = self.dir / "control.sock"
        (self.dir / "conf.d" / "bench.conf").write_text(f"""
[daemon]
run_dir = {self.dir}
drop_privileges = false
systemd_enable = false
max_connections = 8
[tls]
enable = true
key_file = {self.dir}/key.pem
cert_file = {self.dir}/cert.pem
ca_file = {self.dir}/ca.pem
[remote]
host = 127.0.0.1
port = {self.port}
[local]
enable = false
[control]
transport = unix
socket = {self.control}
[handlers]
keys = logfile
[logger_root]
level = WARNING
handlers = logfile
[handler_logfile]
args = ('{self.dir}/daemon.log',)
""")
        self.proc = subprocess.Popen([str(Path(PY).parent / "ovirt-imageio"), "--conf-dir", str(self.dir)])
        while not self.control.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"ovirt-imageio did not start (exit {self.proc.returncode})")
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)

    def ticket(self, target: Path, size: int) -> str:
        tid = str(uuid.uuid4())
        body = json.dumps({"uuid": tid, "size": size, "url": f"file://{target}", "timeout": 3000,
                           "ops": ["read", "write"]})
        subprocess.run(["curl", "-sS", "--fail", "--unix-socket", str(self.control), "-X", "PUT", "--data-binary",
                        body, f"http://localhost/tickets/{tid}"], check=True, capture_output=True)
        return tid

    def upload(self, image: Path, raw: Path, size: int) -> Result:

        target = OUT / f"imageio-{image.suffix[1:]}.raw"
        target.unlink(missing_ok=True)
        with open(target, "wb") as f:
            f.truncate(size)
        tid = self.ticket(target, size)
        drop_caches()
        before = children_cpu()
        with Sampler(self.proc.pid, None) as s:
            start = time.monotonic()
            subprocess.run([PY, "-c", "import sys; from ovirt_imageio import client; "
                                      "client.upload(sys.argv[1], sys.argv[2], sys.argv[3])",
                            str(image), f"https://localhost:{self.port}/images/{tid}", str(self.dir / "ca.pem")],
                           check=True)
            subprocess.run(["sync"], check=True)
            wall = time.monotonic() - start
        ok = volume_digest(str(target), size) == expected_digest(raw, size)
        target.unlink()
        return Result("ovirt-imageio client -> server", image.suffix[1:], wall, size, s.rss, 0, data_bytes(image), ok,
                      s.cpu, 0.0, children_cpu() - before)


def data_bytes(image: Path) -> int:
    """Bytes of guest data (what a client that skips zeros sends)."""
    fmt = "qcow2" if image.suffix == ".qcow2" else "raw"
    out = subprocess.run(["qemu-img", "map", "--output=json", "-f", fmt, str(image)], capture_output=True,
                         text=True, check=True).stdout
    return sum(e["length"] for e in json.loads(out) if e.get("data") and not e.get("zero"))


def report(results: list[Result], size: int) -> str:
    lines = [f"# Upload benchmark ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {size >> 20} MiB image, "
             "about 40% data, one run each)", "",
             "| case | image | wall s | MB/s | server peak RSS MiB | scratch MiB | bytes sent MiB | verified "
             "| CPU s: client / proxy / server |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.case} | {r.image} | {r.wall:.2f} | {r.rate:.0f} | {r.peak_rss / 2**20:.0f} | "
                     f"{r.scratch / 2**20:.0f} | {r.sent / 2**20:.0f} | {'yes' if r.verified else 'NO'} "
                     f"| {r.client_cpu:.1f} / {r.proxy_cpu:.1f} / {r.server_cpu:.1f} |")
    base = {r.image: r for r in results if r.case.startswith("ovirt")}
    lines += ["", "Ratios (time of cdi + curl / time of ovirt-imageio; below 1 is faster):", ""]
    for r in results:
        if r.case.startswith("cdi") and r.image in base:
            lines.append(f"- {r.case}, {r.image}: {r.wall / base[r.image].wall:.2f}x")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--ready-only", action="store_true",
                    help="only the upload-only cases (volume ready, --sparse) and ovirt-imageio")
    args = ap.parse_args()
    size = args.size_mib << 20
    raw, qcow2 = make_images(size)
    results: list[Result] = []
    cdi = Cdi()
    try:
        for image in (raw, qcow2):
            if not args.ready_only:
                log(f"cdi + curl {image.name}")
                results.append(cdi.curl(f"curl-{image.suffix[1:]}", image, raw, size))
                log(f"cdi image-upload {image.name}")
                results.append(cdi.image_upload(f"iu-{image.suffix[1:]}", image, raw, size))
                log(f"cdi image-upload --sparse {image.name}")
                results.append(cdi.image_upload(f"ius-{image.suffix[1:]}", image, raw, size, sparse=True))
            log(f"cdi image-upload --sparse --no-create {image.name}")
            results.append(cdi.image_upload(f"iur-{image.suffix[1:]}", image, raw, size, sparse=True, ready=True))
    finally:
        cdi.stop()
    imageio = Imageio()
    try:
        for image in (raw, qcow2):
            log(f"ovirt-imageio {image.name}")
            results.append(imageio.upload(image, raw, size))
    finally:
        imageio.stop()
    text = report(results, size)
    (REPO / "bench" / "out" / "upload.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
