"""What a registry image reference names, the platform chosen from an index, and the errors of a
registry (kept apart from the client in ``importer.oci`` so that both stay small).

``Reference.parse`` normalises ``docker://host[:port]/repo[:tag|@digest]`` as docker does;
``choose_platform`` picks linux and this machine's architecture from a manifest list or OCI index, as
CDI (containers/image) does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from importer.errors import PermanentError, SourceError, TemporaryError

DOCKER_HUB = "registry-1.docker.io"
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


# -- errors ------------------------------------------------------------------------------------------

class RegistryError(SourceError):
    """The registry refused the request or the reference is wrong; retrying the same job cannot help."""

    reason = "ImportFailed"


class InvalidReference(RegistryError):
    reason = "InvalidImageReference"


class ImageNotFound(RegistryError):
    reason = "ImageNotFound"


class Unauthorized(RegistryError):
    reason = "Unauthorized"


class PlatformNotFound(RegistryError):
    reason = "ImageNotFound"


class DigestMismatch(PermanentError):
    """What the registry sent is not what its digest says: a broken or tampered registry or mirror."""

    reason = "DigestMismatch"


class RegistryUnavailable(TemporaryError):
    """The registry answered with a server error or could not be reached: a later try may work."""

    reason = "RegistryUnavailable"


# -- references --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Reference:
    """``docker://host[:port]/repo[:tag|@digest]``, normalised as docker does (no host: Docker Hub,
    ``library/`` for one-component names; no tag: ``latest``)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def ref(self) -> str:
        """What to ask the registry for: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.ref}")

    @classmethod
    def parse(cls, url: str) -> Reference:
        text = url[len("docker://"):] if url.startswith("docker://") else url
        if "://" in text or not text:
            raise InvalidReference(f"invalid registry URL {url!r}: write docker://host[:port]/repo[:tag|@digest]")
        digest = None
        if "@" in text:
            text, digest = text.split("@", 1)
            if not DIGEST_RE.match(digest):
                raise InvalidReference(f"invalid digest {digest!r} in {url!r}: write @sha256:<64 hex digits>")
        first, sep, rest = text.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            registry, path = first, rest
        else:
            registry, path = DOCKER_HUB, text
            if "/" not in path:
                path = "library/" + path
        tag = None
        name, colon, maybe_tag = path.rpartition(":")
        if colon and "/" not in maybe_tag:
            path, tag = name, maybe_tag
            if not _TAG.match(tag):
                raise InvalidReference(f"invalid tag {tag!r} in {url!r}")
        if not _REPO.match(path):
            raise InvalidReference(f"invalid repository name {path!r} in {url!r}: lower-case letters, digits, "
                                   "and . _ - / separators")
        if tag is None and digest is None:
            tag = "latest"
        return cls(registry, path, tag, digest)


def host_platform() -> tuple[str, str, str | None]:
    """(os, architecture, variant) of this machine in Go's names, as CDI (containers/image) picks them."""
    machine = os.uname().machine
    arch, variant = {
        "x86_64": ("amd64", None), "aarch64": ("arm64", "v8"), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
        "ppc64le": ("ppc64le", None), "s390x": ("s390x", None), "riscv64": ("riscv64", None),
    }.get(machine, (machine, None))
    return "linux", arch, variant


def choose_platform(index: dict[str, Any], ref: Reference, architecture: str | None = None) -> dict[str, Any]:
    """The descriptor of this machine's image (or of ``architecture``'s) in a manifest list or OCI index."""
    want_os, want_arch, want_variant = host_platform()
    if architecture and architecture != want_arch:
        want_arch, want_variant = architecture, None
    found = []
    candidates = []
    for desc in index.get("manifests") or []:
        plat = desc.get("platform") or {}
        found.append("/".join(x for x in (plat.get("os"), plat.get("architecture"), plat.get("variant")) if x)
                     or "unknown")
        if plat.get("os") == want_os and plat.get("architecture") == want_arch:
            candidates.append(desc)
    for desc in candidates:  # an exact variant first, then one without, then any (arm64 images rarely say v8)
        if (desc.get("platform") or {}).get("variant") == want_variant:
            return desc
    for desc in candidates:
        if not (desc.get("platform") or {}).get("variant"):
            return desc
    if candidates:
        return candidates[0]
    raise PlatformNotFound(f"the image {ref} has no {want_os}/{want_arch} image in its index (it has "
                           f"{', '.join(found) or 'none'})")
