"""S3 source: an object read as the http source reads a file, every request signed with AWS SigV4.

CDI's ``source.s3.url`` names the object either path style (``http(s)://host[:port]/bucket/key``, as
MinIO, Ceph RGW and other S3-compatible stores serve it) or virtual-host style
(``https://bucket.s3.region.amazonaws.com/key``). Both are plain URLs of the object, so the transfer is
the http source's (ranges, resume tied to the ETag, the end proven, random reads for a remote convert);
only the requests change: each one, ranged or not, carries a fresh SigV4 signature computed by
botocore from the secretRef's accessKeyId and secretKey. Without credentials the object is read
anonymously (a public bucket). S3's XML errors become messages that name the cause.
"""

from __future__ import annotations

import http.client
import re
import urllib.parse
from dataclasses import dataclass

from importer.errors import SourceError, TemporaryError
from importer.http_options import HttpOptions
from importer.sources.http import HttpSource
from importer.sources.http_client import NETWORK_ERRORS, Client, same_origin

DEFAULT_REGION = "us-east-1"
_AWS_HOST = re.compile(
    r"^(?:(?P<bucket>.+)\.)?s3(?:[.-](?P<region>(?!amazonaws)[a-z0-9-]+))?(?:\.dualstack)?\.amazonaws\.com(?:\.cn)?$"
)


@dataclass(frozen=True)
class S3Location:
    endpoint: str  # scheme://host[:port]
    bucket: str
    key: str
    region: str
    virtual_host: bool


def parse_s3_url(url: str) -> S3Location:
    """Bucket, key and region of an S3 object URL, path style or virtual-host style."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SourceError(f"invalid S3 URL {url!r}: write http(s)://host[:port]/bucket/key or "
                          "https://bucket.s3.region.amazonaws.com/key")
    host = parts.hostname
    endpoint = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    path = urllib.parse.unquote(parts.path).lstrip("/")
    m = _AWS_HOST.match(host)
    region = (m.group("region") if m else None) or DEFAULT_REGION
    if m and m.group("bucket"):
        bucket, key, virtual = m.group("bucket"), path, True
    else:
        bucket, _, key = path.partition("/")
        virtual = False
    if not bucket or not key:
        raise SourceError(f"invalid S3 URL {url!r}: it names no object (bucket {bucket or '?'}, key {key or '?'})")
    return S3Location(endpoint, bucket, key, region, virtual)


class SignedClient(Client):
    """The http client, with every request to the object's origin signed (SigV4) and S3's errors read."""

    def __init__(self, url: str, options: HttpOptions, region: str) -> None:
        super().__init__(url, options)
        from botocore.auth import S3SigV4Auth
        from botocore.credentials import Credentials

        assert options.user is not None
        self._signer = S3SigV4Auth(Credentials(options.user, options.password or ""), "s3", region)

    def request_headers(self, url: str, extra: dict[str, str]) -> dict[str, str]:
        headers = {k: v for k, v in self._headers(url).items() if k != "Authorization"}
        headers.update(extra)
        if not same_origin(url, self.original_url):  # a redirect elsewhere (a presigned URL) is not ours to sign
            return headers
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="GET", url=url, headers=headers)
        self._signer.add_auth(request)  # a new date and signature for each request, Range included
        return dict(request.headers.items())

    @staticmethod
    def _raise_for(resp: http.client.HTTPResponse, url: str) -> None:
        raise_s3_error(resp, url)


def raise_s3_error(resp: http.client.HTTPResponse, url: str) -> None:
    """S3's answer to a refused request (an XML ``<Error>``) as an error a user can act on."""
    status = resp.status
    try:
        body = resp.read(4096).decode("utf-8", "replace")
    except NETWORK_ERRORS:
        body = ""
    resp.close()
    code = (re.search(r"<Code>([^<]*)</Code>", body) or [None, ""])[1]
    message = (re.search(r"<Message>([^<]*)</Message>", body) or [None, ""])[1]
    said = f"{code}: {message}" if code else f"HTTP {status} {resp.reason}"
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "InvalidClientTokenId",
                "AuthorizationHeaderMalformed"):
        raise SourceError(f"S3 refused the credentials ({said}) at {url}: check the secretRef's accessKeyId and "
                          "secretKey")
    if status in (401, 403):
        raise SourceError(f"access denied by S3 ({said}) at {url}: give a secretRef (accessKeyId, secretKey) "
                          "allowed to read the object")
    if status == 404 or code in ("NoSuchKey", "NoSuchBucket"):
        raise SourceError(f"not found: S3 says {said} at {url}; check the bucket and key")
    if status in (408, 429) or status >= 500 or code in ("SlowDown", "RequestTimeout", "InternalError"):
        raise TemporaryError(f"S3 server error ({said}) at {url}")
    raise SourceError(f"S3 refused the request ({said}) at {url}")


class S3Source(HttpSource):
    """An S3 object, read with the http source's transfer and signed requests."""

    def __init__(self, url: str, options: HttpOptions | None = None) -> None:
        super().__init__(url, options)
        self.location = parse_s3_url(url)
        if self.options.user is not None:
            self.client = SignedClient(url, self.options, self.location.region)
        else:
            self.client = AnonymousS3Client(url, self.options)


class AnonymousS3Client(Client):
    """An unsigned client of a public object, with S3's errors read."""

    @staticmethod
    def _raise_for(resp: http.client.HTTPResponse, url: str) -> None:
        raise_s3_error(resp, url)
