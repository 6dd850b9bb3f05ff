"""Settings of the local node: where it keeps volumes and pod state, and how much it runs at once."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from cdi.node.images import WORKER_IMAGES, Image


@dataclass
class NodeSettings:
    """How the local node provisions volumes and runs pods.

    Every field is checked by ``validate()`` (called by ``LocalNode``), so bad values fail at start.
    """

    data_dir: Path
    """Root of the node's state: volumes under ``data_dir/volumes``, pod state under ``data_dir/pods``."""

    node_name: str = "cdi-local"
    """The name this node reports (``spec.nodeName`` field references, events)."""

    max_running_pods: int = 4
    """At most this many containers run at once; further pods wait, in creation order, for a slot."""

    restart_backoff: float = 10.0
    """Seconds before the first OnFailure/Always restart; doubles per restart up to ``restart_backoff_max``."""

    restart_backoff_max: float = 300.0
    """Cap of the restart back-off, in seconds (kubelet's is 300)."""

    block_pool: list[Path] = field(default_factory=list)
    """Real block devices handed out to ``volumeMode: Block`` claims (the smallest one large enough);
    with none free, Block claims get a sparse file of exactly the requested size."""

    python: str = sys.executable
    """Interpreter that replaces a leading ``python``/``python3`` of a container command."""

    images: dict[str, Image] = field(default_factory=lambda: dict(WORKER_IMAGES))
    """The images this node runs, by name (see ``cdi.node.images``); any other image is refused."""

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.block_pool = [Path(p) for p in self.block_pool]

    @property
    def volumes_dir(self) -> Path:
        return self.data_dir / "volumes"

    @property
    def pods_dir(self) -> Path:
        return self.data_dir / "pods"

    def validate(self) -> None:
        """Raise ValueError with a message naming the bad setting."""
        if not self.node_name:
            raise ValueError("node_name must not be empty")
        if self.max_running_pods < 1:
            raise ValueError(f"max_running_pods must be at least 1, not {self.max_running_pods}")
        if self.restart_backoff < 0 or self.restart_backoff_max < self.restart_backoff:
            raise ValueError("restart_backoff must be >= 0 and not above restart_backoff_max")
        if not self.images:
            raise ValueError("images must name at least one image the node can run")
        if not Path(self.python).exists():
            raise ValueError(f"python interpreter {self.python} does not exist")
