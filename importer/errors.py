"""Errors of the import worker.

One root, ``Error``; each carries a message a user can act on. ``TemporaryError`` means a retry may
succeed (network trouble, a server error); ``PermanentError`` means retrying the same job cannot help
(checksum mismatch, hostile image, image larger than the volume). Nothing here knows about HTTP
status codes of our own API or about controllers.
"""

from __future__ import annotations


class Error(Exception):
    """Root of the importer's errors; ``str(e)`` is the user-facing message."""

    permanent = True
    reason = "ImportFailed"


class TemporaryError(Error):
    """A failure that a later retry of the same job may get past."""

    permanent = False

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Error):
    """A failure that retrying the same job cannot fix."""


class SourceError(PermanentError):
    """The source refused us or does not exist (HTTP 4xx, missing file)."""

    reason = "SourceUnavailable"


class ChecksumMismatch(PermanentError):
    reason = "ChecksumMismatch"


class CapacityExceeded(PermanentError):
    reason = "ImageTooLarge"


class UnsafeImage(PermanentError):
    """The image asks for something we never do with untrusted input."""

    reason = "UnsafeImage"


class FormatError(PermanentError):
    """The content is not what it should be (HTML page, unknown or corrupt image)."""

    reason = "InvalidImage"


class ToolTimedOut(FormatError):
    """qemu-img took longer than its limit on an untrusted image (a local file: the image is hostile)."""


class ToolError(Error):
    """An external tool (qemu-img, xz, zstd) failed; carries its command and stderr."""

    reason = "ToolFailed"

    def __init__(self, message: str, *, cmd: list[str] | None = None, stderr: str = "") -> None:
        detail = stderr.strip().splitlines()[-3:] if stderr else []
        super().__init__(message + (": " + " ".join(detail) if detail else ""))
        self.cmd = cmd or []
        self.stderr = stderr


class ScratchSpaceRequired(Error):
    """The job needs scratch space (a source qemu-img cannot read over the network, a checksum to prove
    before use, a qcow2 whose tables come after their data) and the pod was given none: its controller
    mounts a scratch claim at /scratch and runs the job again. Not permanent, and nothing wrong is left
    in the volume: what was written is removed, a resume point is kept."""

    permanent = False
    reason = "ScratchSpaceRequired"
    # CDI's words (common.ScratchSpaceRequired), which its controller and ours recognise
    MESSAGE = "scratch space required and none found"

    def __init__(self, message: str = MESSAGE) -> None:
        super().__init__(message)


class RestartFromZero(TemporaryError):
    """The source cannot continue where it stopped; the transfer starts again from byte 0.

    ``cut_at``/``announced``: where the body ended and the length the server had announced, so that a
    server that ends its body at the same byte every time is recognised as lying about its length."""

    def __init__(self, message: str, *, cut_at: int | None = None, announced: int | None = None) -> None:
        super().__init__(message)
        self.cut_at = cut_at
        self.announced = announced


class SourceChanged(RestartFromZero):
    """The file changed on the server during the import: whatever was read of it is discarded."""


class Stalled(TemporaryError):
    """The server sent less than the low-speed limit for too long, too many times."""

    reason = "SourceStalled"


class NetworkError(TemporaryError):
    """The server could not be reached or kept dropping the connection without progress."""

    reason = "NetworkError"
