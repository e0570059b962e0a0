"""User-facing errors: one line each, printed by the CLI without a traceback."""


class RobustSweepError(Exception):
    """Base of every error a user can fix (bad config, missing resource, bad data)."""


class ConfigError(RobustSweepError):
    """A job file or override does not validate."""


class DataError(RobustSweepError):
    """A data source cannot be read or has no usable rows."""


class ResourceError(RobustSweepError):
    """An offline resource (model weights, NLTK data, vectors) is missing."""


class MethodError(RobustSweepError):
    """Unknown method or invalid method knobs."""
