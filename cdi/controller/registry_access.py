"""Asking a registry from the controller: which digest a tag points at now, with a registry source's
own credentials (``secretRef``: accessKeyId, secretKey), CA (``certConfigMap``) and CDIConfig's
``insecureRegistries``, the way the importer pod would reach it.

The DataImportCron polls with it (CDI runs a poller pod for that; here the controller asks directly),
and the image cache uses it to learn the digest behind a tag. Registry errors come back as
``importer.errors.Error`` subclasses, with messages that say what to fix.
"""

from __future__ import annotations

import base64
import os
import tempfile

from cdi.controller import resources
from cdi.kube import CONFIGMAP, SECRET, Client, Obj
from cdi.kube.kinds import CDICONFIG
from importer import oci

DIGEST_PREFIX = "sha256:"
# (timeout, retries): a lookup that only saves work (the image cache) tries once, briefly; a cron's poll
# a little longer, but never holds a controller worker for minutes as an importer may wait for a registry.
QUICK = (5.0, 0)
POLL = (15.0, 2)


def _resolve(url: str, *, username: str | None, password: str | None, ca_file: str | None, insecure: bool,
             quick: bool) -> str:
    timeout, retries = QUICK if quick else POLL
    ref = oci.Reference.parse(url)
    client = oci.Client(ref, oci.Credentials(username, password, ca_file, insecure, timeout=timeout, retries=retries))
    try:
        return client.manifest(ref.ref)[2]
    finally:
        client.close()


def insecure_registry(client: Client, url: str) -> bool:
    """Whether CDIConfig ``config`` lists the URL's registry in insecureRegistries (as the importer's pod)."""
    config = client.find(CDICONFIG, None, "config")
    listed = [str(x) for x in ((config or {}).get("spec") or {}).get("insecureRegistries") or []]
    return resources.insecure_registry(url, listed)


def pinned_digest(url: str) -> str | None:
    """The ``sha256:...`` a ``docker://host/repo@sha256:...`` URL pins, or None for a tag."""
    _, sep, digest = url.rpartition("@")
    if sep and digest.startswith(DIGEST_PREFIX) and len(digest) == len(DIGEST_PREFIX) + 64:
        return digest
    return None


def untagged(url: str) -> str:
    """``docker://host[:port]/repo`` without its ``:tag`` or ``@digest``."""
    url = url.split("@", 1)[0]
    scheme, _, rest = url.partition("://")
    head, slash, last = rest.rpartition("/")
    if slash and ":" in last:
        last = last.split(":", 1)[0]
    return f"{scheme}://{head}{slash}{last}"


def tag_digest(client: Client, namespace: str, registry: Obj, *, quick: bool = False) -> str:
    """The digest the registry source's URL points at now (its pinned digest without asking); ``quick``:
    one try with a short timeout."""
    url = str(registry.get("url") or "")
    pinned = pinned_digest(url)
    if pinned:
        return pinned
    username = password = None
    if registry.get("secretRef"):
        secret = client.get(SECRET, namespace, str(registry["secretRef"]))
        data = secret.get("data") or {}
        username = base64.b64decode(data.get("accessKeyId", "")).decode() or None
        password = base64.b64decode(data.get("secretKey", "")).decode() or None
    insecure = insecure_registry(client, url)
    if not registry.get("certConfigMap"):
        return _resolve(url, username=username, password=password, ca_file=None, insecure=insecure, quick=quick)
    cm = client.get(CONFIGMAP, namespace, str(registry["certConfigMap"]))
    pem = "\n".join(str(v) for v in (cm.get("data") or {}).values())
    fd, path = tempfile.mkstemp(prefix="cdi-registry-ca-", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(pem)
        return _resolve(url, username=username, password=password, ca_file=path, insecure=insecure, quick=quick)
    finally:
        os.unlink(path)
