"""The web console of ``cdi serve``: pages under ``/ui/`` and a same-origin relay to the API."""
