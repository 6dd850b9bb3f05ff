"""TLS material of uploads: the signers, each upload server's certificate, the proxy's client certificate.

As in CDI, two private CAs live in Secrets of the ``cdi`` namespace: ``cdi-uploadserver-signer`` signs
the serving certificate of each upload server pod (for its Service's DNS names and 127.0.0.1), and
``cdi-uploadserver-client-signer`` signs the client certificate the upload proxy presents; an upload
server accepts only a client certificate from that signer with the expected common name. Pure
functions over PEM bytes plus ``ensure_signers``, which creates the two Secrets once.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cdi.kube import SECRET, AlreadyExists, Client, NotFound, TemporaryError

log = logging.getLogger(__name__)

CDI_NAMESPACE = "cdi"
SERVER_SIGNER = "cdi-uploadserver-signer"
CLIENT_SIGNER = "cdi-uploadserver-client-signer"
CLIENT_NAME = "client.upload-server.cdi.kubevirt.io"
CA_VALIDITY = datetime.timedelta(days=3650)
CERT_VALIDITY = datetime.timedelta(days=30)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def new_ca(cn: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) of a new self-signed CA."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def issue(ca_cert_pem: bytes, ca_key_pem: bytes, cn: str, *, dns: tuple[str, ...] = (),
          ips: tuple[str, ...] = (), client: bool = False) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) signed by the CA: a server certificate, or a client one."""
    ca = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + CERT_VALIDITY)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def secret_data(**values: bytes) -> dict[str, str]:
    return {k.replace("_", "."): base64.b64encode(v).decode() for k, v in values.items()}


def read_pair(client: Client, name: str) -> tuple[bytes, bytes]:
    """(tls.crt, tls.key) of a Secret in the cdi namespace."""
    data = client.get(SECRET, CDI_NAMESPACE, name).get("data") or {}
    return base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"])


def ensure_signers(client: Client) -> None:
    """Create the two signer Secrets if missing (first writer wins). The cdi namespace is the chart's or
    ``cdi serve``'s (the controller may not create namespaces)."""
    for name in (SERVER_SIGNER, CLIENT_SIGNER):
        if client.find(SECRET, CDI_NAMESPACE, name) is not None:
            continue
        cert, key = new_ca(name)
        try:
            client.create(SECRET, {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                                   "metadata": {"name": name, "namespace": CDI_NAMESPACE},
                                   "data": secret_data(tls_crt=cert, tls_key=key)})
            log.info("created upload signer secret=%s/%s", CDI_NAMESPACE, name)
        except AlreadyExists:
            pass
        except NotFound as e:
            raise TemporaryError(f"the {CDI_NAMESPACE} namespace of the upload signers does not exist: install the "
                                 f"chart into it or run cdi serve, which make it ({e})") from e
