"""``cdi import SOURCE TARGET`` and ``cdi digest PATH``: the import pipeline for people.

The same code runs in the importer pod (``python -m importer``); options mirror CDI's http source.
Prints the result as JSON on stdout; errors go to stderr with exit code 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import json
import sys

from cdi.units import format_size, parse_size
from importer.http_options import HttpOptions, parse_header


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("import", help="import a disk image into a raw file, block device or directory",
                       description="Import SOURCE (http(s) URL, docker:// containerDisk image, S3 object with "
                       "--s3, file:// URL or path) into TARGET.")
    p.add_argument("source", help="http(s) URL, docker://host/repo:tag, file:// URL or local path")
    p.add_argument("target", help="raw file (created), existing block device, or directory (archive)")
    p.add_argument("--user", help="basic-auth user name")
    p.add_argument("--password-file", help="file holding the basic-auth password")
    p.add_argument("--ca-file", help="PEM file of CA certificates to trust for https")
    p.add_argument("--insecure-skip-verify", action="store_true",
                   help="do not verify the server's TLS certificate (a docker:// registry: plain http too)")
    p.add_argument("--s3", action="store_true",
                   help="SOURCE is an S3 object: sign requests (SigV4) with --user (access key id) and "
                   "--password-file (secret key)")
    p.add_argument("--header", action="append", default=[], metavar="'Name: value'",
                   help="extra HTTP header (repeatable)")
    p.add_argument("--checksum", metavar="ALGO:HEX",
                   help="expected checksum of the source bytes (md5, sha1, sha256, sha512)")
    p.add_argument("--size", help="volume capacity, e.g. 10Gi (default: the image's virtual size)")
    p.add_argument("--content-type", choices=("kubevirt", "archive"), default="kubevirt")
    p.add_argument("--scratch-dir",
                   help="where scratch space goes when it cannot be avoided (default: beside the target)")
    p.add_argument("--progress", choices=("auto", "bar", "json", "none"), default="auto")
    p.add_argument("--progress-file", help="also write progress snapshots as JSON to this file")
    p.add_argument("--retries", type=int, default=5,
                   help="reconnects after network errors that made no progress (default 5)")
    p.add_argument("--speed-limit", default="16Ki", metavar="BYTES",
                   help="a connection slower than this many bytes/s for --speed-time is a stall (default 16Ki; "
                        "0 turns the check off)")
    p.add_argument("--speed-time", type=float, default=60.0, metavar="SECONDS",
                   help="how long a connection may stay under --speed-limit (default 60)")
    p.add_argument("--max-stalled-retries", type=int, default=3, metavar="N",
                   help="reconnects after stalls that made no progress before giving up (default 3)")
    p.set_defaults(func=run_import_cmd)

    d = sub.add_parser("digest", help="volume digest of a raw file or block device")
    d.add_argument("path")
    d.add_argument("--size", help="digest only the first SIZE bytes")
    d.set_defaults(func=run_digest_cmd)


def _fail(message: str, code: int = 1) -> int:
    print(f"cdi import: error: {message}", file=sys.stderr)
    return code


def run_import_cmd(args: argparse.Namespace) -> int:
    from importer.errors import Error
    from importer.pipeline import ImportJob, parse_checksum, run_import
    from importer.progress import Progress

    try:
        size = parse_size(args.size) if args.size else None
        headers = [parse_header(h) for h in args.header]
        if args.checksum:
            parse_checksum(args.checksum)
        password = None
        if args.password_file:
            with open(args.password_file) as f:
                password = f.read().rstrip("\r\n")
        if args.retries < 0:
            raise ValueError("--retries must be 0 or more")
        speed_limit = parse_size(args.speed_limit)
        if args.speed_time <= 0:
            raise ValueError("--speed-time must be more than 0 seconds")
        if args.max_stalled_retries < 0:
            raise ValueError("--max-stalled-retries must be 0 or more")
    except (ValueError, OSError) as e:
        return _fail(str(e), 2)
    job = ImportJob(
        source=args.source,
        target=args.target,
        content_type=args.content_type,
        size=size,
        http=HttpOptions(user=args.user, password=password, ca_file=args.ca_file,
                         insecure=args.insecure_skip_verify, headers=headers, retries=args.retries,
                         speed_limit=speed_limit, speed_time=args.speed_time,
                         max_stalled_retries=args.max_stalled_retries, s3=args.s3),
        checksum=args.checksum,
        scratch_dir=args.scratch_dir,
    )
    try:
        progress = Progress(mode=args.progress, file=args.progress_file)
        with progress:
            result = run_import(job, progress)
    except Error as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    print(json.dumps(result.to_dict(), indent=2))
    if args.progress in ("bar", "auto") and sys.stderr.isatty():
        print(f"imported {'/'.join(result.formats)}: {format_size(result.virtual_size or 0)} virtual, "
              f"{format_size(result.bytes_written)} written, digest {result.digest}", file=sys.stderr)
    return 0


def run_digest_cmd(args: argparse.Namespace) -> int:
    from importer.digest import volume_digest

    try:
        size = parse_size(args.size) if args.size else None
        print(volume_digest(args.path, size))
    except (ValueError, OSError) as e:
        print(f"cdi digest: error: {e}", file=sys.stderr)
        return 1
    return 0
