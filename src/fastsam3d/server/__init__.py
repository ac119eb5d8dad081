"""``fastsam3d serve``: a local HTTP API and NiiVue web page for click-to-segment sessions."""

from ..interactive.annotation import AnnotatedObject, Annotation, AnnotationError
from .app import ServerConfig, create_app
from .store import Limits, SessionStore

__all__ = [
    "AnnotatedObject",
    "Annotation",
    "AnnotationError",
    "Limits",
    "ServerConfig",
    "SessionStore",
    "create_app",
]
