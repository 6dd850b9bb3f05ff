"""``cdi demo``: import the bundled sample image over http from 127.0.0.1 and show the result.

A newcomer's first run: it serves ``cdi/samples/demo.qcow2`` with a local Range-capable server,
imports it with the same pipeline the importer pod runs (qcow2 converted over the network, no
scratch), and checks the volume digest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from importlib import resources

from cdi.units import format_size


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="import the bundled sample image over http and show the result")
    p.add_argument("--dir", help="where to write the volume (default: a new temporary directory)")
    p.set_defaults(func=run_demo)


def sample_dir() -> str:
    return str(resources.files("cdi") / "samples")


def run_demo(args: argparse.Namespace) -> int:
    from cdi.fileserver import FileServer
    from importer.digest import volume_digest
    from importer.errors import Error
    from importer.pipeline import ImportJob, run_import
    from importer.progress import Progress

    workdir = args.dir or tempfile.mkdtemp(prefix="cdi-demo-")
    os.makedirs(workdir, exist_ok=True)
    target = os.path.join(workdir, "disk.img")
    with FileServer(sample_dir()) as server:
        url = server.url("demo.qcow2")
        print(f"serving the sample image at {url}", file=sys.stderr)
        print(f"cdi import {url} {target} --size 1Gi", file=sys.stderr)
        try:
            with Progress(mode="auto" if sys.stderr.isatty() else "json") as progress:
                result = run_import(ImportJob(source=url, target=target, size=1 << 30), progress)
        except Error as e:
            print(f"cdi demo: import failed: {e}", file=sys.stderr)
            return 1
    print(json.dumps(result.to_dict(), indent=2))
    again = volume_digest(target)
    print(f"\nvolume {target}: {format_size(os.path.getsize(target))} capacity, "
          f"{format_size(result.bytes_written)} allocated; formats {'/'.join(result.formats)}; "
          f"scratch {result.scratch_bytes} bytes", file=sys.stderr)
    print(f"digest {result.digest} ({'verified' if again == result.digest else 'MISMATCH'})", file=sys.stderr)
    return 0 if again == result.digest else 1
