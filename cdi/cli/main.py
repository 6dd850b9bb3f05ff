"""The ``cdi`` command: one entry point, one subcommand per module under ``cdi.cli``."""

from __future__ import annotations

import argparse
import logging
import sys

from cdi.cli import controller, demo, imageupload, importcmd, serve, uploadproxy, user, vm, webhook


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cdi", description="Containerized Data Importer, standalone")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    importcmd.register(sub)
    imageupload.register(sub)
    demo.register(sub)
    serve.register(sub)
    controller.register(sub)
    user.register(sub)
    vm.register(sub)
    webhook.register(sub)
    uploadproxy.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
