"""Errors that are the user's to fix: the CLI prints them as one clear line, without a traceback."""


class UserFacingError(Exception):
    """Bad input, a config typo, a missing file: the message names the file or key and the problem."""


class ConfigError(UserFacingError, ValueError):
    """A config key is unknown, has the wrong type, or a file of the defaults list is missing."""


class DataError(UserFacingError, ValueError):
    """A clip, landmark file or data root cannot be used."""


class CheckpointError(UserFacingError, ValueError):
    """A checkpoint is missing keys, has unexpected keys, or shapes that do not match the network."""


class MissingWeightsError(UserFacingError, FileNotFoundError):
    """A pretrained weight file is not on disk (nothing can be downloaded offline)."""
