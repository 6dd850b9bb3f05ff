"""Controllers: reconcilers that read objects through ``cdi.kube`` and write the desired ones back.

The same code runs inside ``cdi serve`` (against the embedded API server) and in a cluster's
controller Deployment (against kube-apiserver).
"""
