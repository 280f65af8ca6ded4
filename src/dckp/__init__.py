"""dckp: dense-correspondence keypoints for robot manipulation."""

from dckp.lazy import lazy_exports

__version__ = "0.1.0"
__getattr__, __all__ = lazy_exports(__name__, {"dckp.tracker": ("KeypointTracker", "Keypoints")})
