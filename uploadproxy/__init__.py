"""Uploads: the upload proxy (token check, routing to the PVC's upload server) and the upload server."""
