"""Errors of the embedding layer, shared by model loading and the hardware checks."""


class ModelUnavailable(LookupError):
    """The embedding model cannot be loaded here; the message says what to use instead."""
