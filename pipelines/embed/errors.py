"""Errors of the embedding layer, shared by model loading, the API client and the hardware checks."""


class ModelUnavailable(LookupError):
    """The embedding model cannot be loaded here; the message says what to use instead."""


class EmbeddingFailed(RuntimeError):
    """An embedding endpoint did not answer after the last try, or its answer cannot be used; the
    message names the endpoint (never the key). Nothing of the batch is written."""
