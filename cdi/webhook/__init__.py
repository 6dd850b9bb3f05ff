"""The admission webhook server: the embedded API server's defaulting and validation for a cluster."""

from cdi.webhook.review import Reviewer, ReviewError
from cdi.webhook.server import WebhookServer, create_app

__all__ = ["ReviewError", "Reviewer", "WebhookServer", "create_app"]
