"""Every URL path of ``fastsam3d serve``, in one place.

The routers register these templates; the load test and the tests request them through
:func:`fill` (``fill(CLICKS, sid="abc")`` is ``/api/sessions/abc/clicks``). The web page
(``static/app.js``) spells the same paths.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import quote, urlencode

from ..errors import InputError

# -- server ------------------------------------------------------------------------------------
HEALTH = "/api/health"
FILES = "/api/files"
HEALTHZ = "/healthz"  # no token: process supervisors and the nnInteractive client poll it

# -- sessions ----------------------------------------------------------------------------------
SESSIONS = "/api/sessions"
UPLOAD = "/api/sessions/upload"
SESSION = "/api/sessions/{sid}"
IMAGE = SESSION + "/image.nii.gz"
OVERLAY = SESSION + "/overlay.nii.gz"

# -- objects, clicks and history ---------------------------------------------------------------
OBJECTS = SESSION + "/objects"
OBJECT = OBJECTS + "/{label}"
ACTIVATE = OBJECT + "/activate"
CLICKS = SESSION + "/clicks"
UNDO = SESSION + "/undo"
REDO = SESSION + "/redo"
RESET = SESSION + "/reset"

# -- label map ---------------------------------------------------------------------------------
LABELS = SESSION + "/labels"
LABELS_FILE = SESSION + "/labels.{fmt}"
SAVE = SESSION + "/save"

# -- recovery ----------------------------------------------------------------------------------
RECOVERY = "/api/recovery"
RECOVERED_LABELS = RECOVERY + "/{rid}/labels.nii.gz"
RESTORE = RECOVERY + "/{rid}/restore"

# -- web page ----------------------------------------------------------------------------------
PAGE = "/"
STATIC = "/static/{name}"
NIIVUE = "/vendor/niivue.js"

# -- nnInteractive remote protocol (fastsam3d.server.nninteractive) ----------------------------
NNI_CLAIM = "/claim"
NNI_RELEASE = "/release"
NNI_HEARTBEAT = "/heartbeat"
NNI_LEASE_STATUS = "/lease_status"
NNI_CAPABILITIES = "/capabilities"
NNI_SET_IMAGE = "/set_image"
NNI_SET_TARGET_BUFFER = "/set_target_buffer"
NNI_SET_DO_AUTOZOOM = "/set_do_autozoom"
NNI_ADD_POINT = "/add_point_interaction"
NNI_PREDICT = "/predict"
NNI_UNDO = "/undo"
NNI_RESET = "/reset_interactions"
NNI_INITIAL_SEG = "/add_initial_seg_interaction"
NNI_UNSUPPORTED = {
    "bbox": "/add_bbox_interaction",
    "scribble": "/add_scribble_interaction",
    "lasso": "/add_lasso_interaction",
}

_FIELD = re.compile(r"\{(\w+)\}")


def fill(template: str, query: Mapping[str, object] | None = None, **params: object) -> str:
    """``template`` with its ``{name}`` fields replaced by ``params`` (URL-quoted), plus a
    query string from ``query`` (its ``None`` values left out).

    Raises:
        ValueError: a field of the template has no value, or a value names no field.
    """
    fields = _FIELD.findall(template)
    missing = [f for f in fields if f not in params]
    unknown = [p for p in params if p not in fields]
    if missing or unknown:
        raise InputError(
            f"route {template}: give exactly its fields {fields}"
            f" (missing {missing}, unknown {unknown})"
        )
    url = _FIELD.sub(lambda m: quote(str(params[m.group(1)]), safe=""), template)
    pairs = {k: v for k, v in (query or {}).items() if v is not None}
    return f"{url}?{urlencode(pairs)}" if pairs else url
