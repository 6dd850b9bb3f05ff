"""The clone worker: copies one volume into another on the same node, or streams it to an upload server."""
