"""The upload parts of ``cdi serve``: the token signer, the upload proxy, and CDIConfig's proxy URL.

The signing key of upload tokens lives in ``DATA_DIR/upload-token.key`` (owner-only); the API server
signs UploadTokenRequests with it and the proxy checks tokens with its public half. The proxy serves
HTTPS with the API server's certificate and reaches upload servers through the local node's Service
resolution. CDIConfig ``config`` gets ``status.uploadProxyURL``, where CDI publishes it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cdi.apiserver.server import ApiServer
from cdi.apiserver.upload_tokens import set_token_signer
from cdi.kube import AlreadyExists, Client
from cdi.kube.kinds import CDICONFIG
from cdi.node.ports import resolve_service
from cdi.uploadtoken import Signer, ensure_key, public_pem
from uploadproxy.proxy import UploadProxy

log = logging.getLogger(__name__)

KEY_FILE = "upload-token.key"
PUBLIC_KEY_FILE = "upload-token.pub"  # what a separate `cdi controller` checks clone tokens with


def start_upload_proxy(api: ApiServer, client: Client, data_dir: Path, host: str, port: int) -> UploadProxy:
    key = ensure_key(data_dir / KEY_FILE)
    set_token_signer(api.app, Signer(key))
    return UploadProxy(client=client, public_key_pem=public_pem(key),
                       resolve=lambda ns, name, p: resolve_service(client, ns, name, p),
                       cert_file=str(api.tls.cert_file), key_file=str(api.tls.key_file), host=host, port=port).start()


def publish_proxy_url(client: Client, url: str) -> None:
    """CDIConfig ``config`` with ``status.uploadProxyURL`` (created when missing)."""
    try:
        client.create(CDICONFIG, {"apiVersion": CDICONFIG.api_version, "kind": "CDIConfig",
                                  "metadata": {"name": "config"}, "spec": {}})
    except AlreadyExists:
        pass
    client.patch(CDICONFIG, None, "config", {"status": {"uploadProxyURL": url}}, status=True)
    log.info("CDIConfig config uploadProxyURL=%s", url)
