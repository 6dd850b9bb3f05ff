"""An upload body as a source: the bytes a client sends, read once, in order, as they arrive.

The body comes from whoever receives the request (the upload server): anything with ``readinto``
and ``complete`` (the transfer's own proof of its end: a Content-Length met, a chunked terminator, a
multipart closing boundary). A body that stops before its announced length raises ``NetworkError``
at once, so the pipeline never finishes a volume from a cut upload. No ranges and no random access:
a resumed upload is continued by the server at the offset it holds, and qcow2 is converted from
what streams in (or from scratch when its layout needs it).

Resume: a body that starts at ``offset`` of an image of ``size`` bytes (a ranged PUT) continues the
interrupted run whose resume point has the same validator, ``upload:<size>``, at exactly that offset;
the pipeline keeps resume points for raw images, which are written byte for byte, and for qcow2 images
converted as they stream (the converter's state is saved with the point). ``prefix``: the digest of
the file's bytes before the body that the client declares (``Upload-Prefix-Digest``): a qcow2 resume
continues only when it is the digest of the bytes received before.
"""

from __future__ import annotations

import threading
from typing import Protocol

from importer.errors import NetworkError
from importer.sources import Capabilities, RangeReader


class Body(Protocol):
    def readinto(self, buf: memoryview | bytearray) -> int: ...

    @property
    def complete(self) -> bool: ...


def upload_validator(size: int | None) -> str | None:
    return f"upload:{size}" if size is not None else None


class UploadSource:
    def __init__(self, body: Body, *, size: int | None, content_type: str | None = None, offset: int = 0,
                 resumable: bool = True, prefix: str | None = None) -> None:
        self.body = body
        self.capabilities = Capabilities(size=size, content_type=content_type,
                                         resumable=resumable and size is not None, prefix=prefix)
        self.position = 0
        self.resumes = 0
        self.offset = offset  # where in the image this body starts (a resumed upload)
        self.ended = threading.Event()  # every byte of the body was read and its end proven

    @property
    def end_verified(self) -> bool:
        return self.body.complete

    @property
    def validator(self) -> str | None:
        return upload_validator(self.capabilities.size)

    def open(self, *, start: int = 0, validator: str | None = None) -> bool:
        """True when this body continues the run at ``start`` (the pipeline asks with its resume point)."""
        return self.offset > 0 and start == self.offset and validator == self.validator

    def range_reader(self) -> RangeReader:
        raise NotImplementedError("an upload body is read once, in order")

    def readinto(self, buf: memoryview | bytearray) -> int:
        n = self.body.readinto(buf)
        self.position += n
        if n == 0:
            size = self.capabilities.size
            if not self.body.complete:
                where = f" of {size}" if size is not None else ""
                raise NetworkError(f"the upload ended at byte {self.offset + self.position}{where}: "
                                   "the connection closed before the whole image was sent")
            self.ended.set()
        return n

    def close(self) -> None:
        pass
