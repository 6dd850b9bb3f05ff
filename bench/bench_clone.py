"""Clone of a 2 GiB volume (about 40% data) against the standard tools, in one run.

- reflink: the clone worker on XFS with reflink (a loop device) against ``cp --reflink=always``, at
  256 MiB and at 2 GiB, to show the time does not grow with the size;
- sparse copy: the clone worker without reflink (SEEK_DATA + copy_file_range, fsync) against
  ``cp --sparse=always`` + ``sync``, on the work directory's filesystem;
- stream: the clone worker's zstd stream over mutual TLS into the real upload server (which writes the
  volume sparse, takes its digest and fsyncs) against ``tar -S -c | zstd -1 -T0 | zstd -d | tar -x``
  + ``sync`` over loopback (the tar pipe runs through a TCP socket with ``socat`` when present).

Prints seconds and ratios (tool time / our time: at least 0.9 is the goal). Needs root for the loop
device; without it the reflink row is skipped.

    .venv/bin/python bench/bench_clone.py [--size-mib 2048] [--dir /var/tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cdi.controller.upload_tls import CLIENT_NAME, issue, new_ca  # noqa: E402
from cloner.copy import clone  # noqa: E402
from cloner.stream import send  # noqa: E402
from tests.support import images  # noqa: E402
from tests.support.xfs import Unavailable, xfs_mount  # noqa: E402


def drop_caches() -> None:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    drop_caches()
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def sh(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stream_once(src: Path, work: Path, size: int) -> float:
    """Our stream: the real upload server as a process, the cloner's sender in this one."""
    server_ca, client_ca = new_ca("server-signer"), new_ca("client-signer")
    cert, key = issue(*server_ca, "uploadserver", ips=("127.0.0.1",))
    ccert, ckey = issue(*client_ca, CLIENT_NAME, client=True)
    target = work / "streamed.img"
    target.unlink(missing_ok=True)
    port = free_port()
    env = {**os.environ, "TLS_CERT": cert.decode(), "TLS_KEY": key.decode(), "CLIENT_CERT": client_ca[0].decode(),
           "CLIENT_NAME": CLIENT_NAME, "DESTINATION": str(target), "UPLOAD_IMAGE_SIZE": str(size),
           "CDI_PORT_8443": str(port), "CDI_PORTS": json.dumps({"8443": port}),
           "TERMINATION_MESSAGE_PATH": str(work / "termination")}
    with open(work / "server.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "uploadproxy.server"], env=env, cwd=work,
                                  stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        return timed(lambda: send(str(src), size, f"https://127.0.0.1:{port}/v1beta1/upload", cert=ccert.decode(),
                                  key=ckey.decode(), ca=server_ca[0].decode()))
    finally:
        server.wait(timeout=60)
        if os.environ.get("BENCH_SERVER_LOG"):
            print((work / "server.log").read_text()[-3000:])


def tar_once(src: Path, work: Path) -> float:
    out = work / "tar-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    if shutil.which("socat"):
        port = free_port()
        receiver = f"socat -u TCP-LISTEN:{port},reuseaddr - | zstd -d -q | tar -xSf - -C {out}"
        sender = f"tar -S -cf - -C {src.parent} {src.name} | zstd -1 -T0 -q | socat -u - TCP:127.0.0.1:{port},retry=50"
        return timed(lambda: sh(f"({receiver}) & {sender}; wait; sync"))
    return timed(lambda: sh(f"tar -S -cf - -C {src.parent} {src.name} | zstd -1 -T0 -q | zstd -d -q | "
                            f"tar -xSf - -C {out}; sync"))


Row = tuple[str, float, str, float]


def sparse_rows(src: Path, work: Path, size: int) -> list[Row]:
    ours = timed(lambda: clone(str(src), str(work / "ours.img"), size, allow_reflink=False))
    cp = timed(lambda: sh(f"cp --sparse=always {src} {work / 'cp.img'} && sync"))
    for p in ("ours.img", "cp.img"):
        (work / p).unlink()
    return [("sparse copy", ours, "cp --sparse=always", cp)]


def stream_rows(src: Path, work: Path, size: int) -> list[Row]:
    ours = stream_once(src, work, size)
    tool = tar_once(src, work)
    (work / "streamed.img").unlink(missing_ok=True)
    shutil.rmtree(work / "tar-out", ignore_errors=True)
    return [("stream (zstd, mTLS, upload server)", ours, "tar -S | zstd | zstd -d | tar -x", tool)]


def reflink_rows(work: Path, size: int) -> list[Row]:
    rows: list[Row] = []
    try:
        with xfs_mount(work, size=size * 2) as mnt:
            for mib in sorted({256, size >> 20}):
                xsrc = images.make_raw(mnt / f"src{mib}.img", mib << 20, data_ratio=0.4)
                ours = timed(lambda x=xsrc, m=mib: clone(str(x), str(mnt / f"ours{m}.img"), m << 20))
                cp = timed(lambda x=xsrc, m=mib: sh(f"cp --reflink=always {x} {mnt / f'cp{m}.img'} && sync"))
                rows.append((f"reflink on XFS, {mib} MiB", ours, "cp --reflink=always", cp))
    except Unavailable as e:
        print(f"reflink rows skipped: {e}")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--only", choices=["sparse", "stream", "reflink"], default=None)
    args = parser.parse_args()
    size = args.size_mib << 20
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-clone-") as tmp:
        work = Path(tmp)
        if args.only != "reflink":
            src = images.make_raw(work / "source.img", size, data_ratio=0.4)
            print(f"source: {size >> 20} MiB, {os.stat(src).st_blocks * 512 >> 20} MiB allocated", flush=True)
            if args.only in (None, "sparse"):
                rows += sparse_rows(src, work, size)
            if args.only in (None, "stream"):
                rows += stream_rows(src, work, size)
            src.unlink()
        if args.only in (None, "reflink"):
            rows += reflink_rows(work, size)
    print("\n| clone | ours (s) | tool | tool (s) | tool/ours |\n|---|---|---|---|---|")
    for name, ours, tool, tool_s in rows:
        print(f"| {name} | {ours:.3f} | {tool} | {tool_s:.3f} | {tool_s / ours:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
