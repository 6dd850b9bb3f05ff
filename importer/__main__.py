"""``python -m importer``: the importer pod's program. Reads the job from the environment, imports,
and writes a JSON termination message (to $TERMINATION_MESSAGE_PATH, default /dev/termination-log)
that the controller reads: ``{"ok": true, "result": {...}}`` or ``{"ok": false, "reason": ...,
"message": ..., "permanent": ...}``. Exit 0 when the volume is complete and verified, and, as CDI's
importer does, when the job needs scratch space and the pod has none (``"scratchSpaceRequired": true``
in the message): the pod then completes instead of being restarted without it, and its controller
runs it again with a scratch claim.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from cdi.metrics import IMPORT_PROGRESS, serve_worker_progress
from cdi.podenv import write_termination
from importer.errors import Error, ScratchSpaceRequired
from importer.job_env import job_from_env
from importer.pipeline import run_import
from importer.progress import Progress

log = logging.getLogger("importer")



def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    try:
        job = job_from_env(os.environ)
        progress = Progress(mode=os.environ.get("IMPORTER_PROGRESS", "json"),
                            file=os.environ.get("IMPORTER_PROGRESS_FILE") or None, interval=1.0)
        serve_worker_progress(IMPORT_PROGRESS, progress.percent, os.environ)
        with progress:
            result = run_import(job, progress)
    except ScratchSpaceRequired as e:
        log.warning("import needs scratch space and the pod has none: asking for a scratch claim")
        write_termination({"ok": False, "reason": e.reason, "message": str(e), "permanent": False,
                           "scratchSpaceRequired": True})
        return 0
    except (Error, ValueError) as e:
        permanent = getattr(e, "permanent", True)
        reason = getattr(e, "reason", "InvalidJob")
        log.error("import failed reason=%s permanent=%s message=%s", reason, permanent, e)
        write_termination({"ok": False, "reason": reason, "message": str(e), "permanent": permanent})
        return 1
    log.info("import done result=%s", json.dumps(result.to_dict()))
    write_termination({"ok": True, "result": result.to_dict()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
