"""jaxreid: unsupervised person re-identification via cross-camera similarity exploration."""

__version__ = '0.1.0'
