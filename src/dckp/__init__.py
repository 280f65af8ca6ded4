"""dckp: dense-correspondence keypoints for robot manipulation."""

__version__ = "0.1.0"
