"""Local node: the volume provisioner and pod runner that fulfil PVCs and Pods on one machine.

``LocalNode(client, NodeSettings(data_dir=...)).start()``; see ``node`` for the whole and ``podspec`` for
the environment contract of the processes it runs.
"""

from cdi.node.node import LocalNode
from cdi.node.settings import NodeSettings

__all__ = ["LocalNode", "NodeSettings"]
