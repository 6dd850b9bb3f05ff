"""The images the local node can run: the project's own worker programs, and nothing else.

A kubelet runs whatever image it can pull; the local node runs containers as host processes, so an
arbitrary image would mean an arbitrary command on the host as the server's user. Instead each image
the node knows maps to the program(s) it ships, as a container image's entrypoint does: a container's
``command`` (with ``args``) must start with one of its image's programs (no ``command``: the image's
entrypoint, the first program), and whatever follows is passed to that program as its arguments. An
image the node does not know is refused the way a kubelet refuses an image it cannot pull
(``ErrImagePull``), with a message naming the images it can run.

Images are matched by the last component of their repository, without registry, tag or digest, so
``quay.io/kubevirt/cdi-importer:v1.60`` and ``cdi-importer:latest`` are the same image here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PYTHON = "python3"


class ImageError(Exception):
    """The container's image or command is not one the node can run (kubelet's ErrImagePull)."""


@dataclass(frozen=True)
class Program:
    """One program of an image: how a pod spec names it, e.g. ``("python3", "-m", "importer")``."""

    command: tuple[str, ...]

    def render(self) -> str:
        return " ".join(self.command)


@dataclass(frozen=True)
class Image:
    name: str
    programs: tuple[Program, ...]  # the first is the entrypoint

    def describe(self) -> str:
        return f"{self.name} ({', '.join(p.render() for p in self.programs)})"


def _python(*module: str) -> Program:
    return Program((PYTHON, "-m", *module))


WORKER_IMAGES: dict[str, Image] = {
    image.name: image
    for image in (
        Image("cdi-importer", (_python("importer"),)),
        Image("cdi-uploadserver", (_python("uploadproxy.server"),)),
        Image("cdi-cloner", (_python("cloner"),)),
        Image("cdi-virt-launcher", (_python("vm_runtime.launcher"), _python("vm_runtime.virt_tail"))),
    )
}


def image_name(reference: str) -> str:
    """``registry:5000/org/name:tag@sha256:...`` -> ``name``."""
    ref = reference.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def _normal(argv: Sequence[str]) -> list[str]:
    """A leading ``python``, ``python3`` or ``/usr/bin/python3`` is the same interpreter everywhere."""
    out = [str(a) for a in argv]
    if out and os.path.basename(out[0]) in ("python", "python3"):
        out[0] = PYTHON
    return out


def resolve(container: Mapping[str, object], images: Mapping[str, Image], python: str) -> list[str]:
    """The host argv of ``container``: its image's program, then the rest of command and args.

    Raises ImageError with kubelet's wording when the image is unknown or the command is not one of
    the image's programs.
    """
    reference = str(container.get("image") or "")
    image = images.get(image_name(reference))
    known = "; ".join(i.describe() for i in images.values())
    if image is None:
        raise ImageError(f'Failed to pull image "{reference}": the local node runs only its own worker images: '
                         f"{known}")
    command = _normal(container.get("command") or [])  # type: ignore[arg-type]
    args = [str(a) for a in container.get("args") or []]  # type: ignore[attr-defined]
    if not command:
        program, rest = image.programs[0], []
    else:
        found = next((p for p in image.programs if tuple(command[:len(p.command)]) == p.command), None)
        if found is None:
            raise ImageError(f"image {image.name} has no program {' '.join(command[:3])!r}: "
                             f"it runs {image.describe()}")
        program, rest = found, command[len(found.command):]
    argv = [*program.command, *rest, *args]
    if argv[0] == PYTHON:
        # -I: isolated mode, so that nothing of the pod's choosing (PYTHON* variables, a user site,
        # the working directory) decides which code the interpreter loads; -u: unbuffered output, as
        # PYTHONUNBUFFERED (ignored under -I) gave, so that logs and progress lines arrive as written.
        argv[0:1] = [python, "-I", "-u"]
    return argv
