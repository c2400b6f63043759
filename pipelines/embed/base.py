"""What every embedder offers the pipeline and the searches, local model or API alike."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Tokens:
    """Tokens an API call spent: as the endpoint reported them, and estimated where it reported none."""

    reported: int = 0
    estimated: int = 0

    def __add__(self, other: Tokens) -> Tokens:
        return Tokens(self.reported + other.reported, self.estimated + other.estimated)

    @property
    def total(self) -> int:
        return self.reported + self.estimated


class Embedder(ABC):
    model_id: str
    """What a version records: vectors of two model ids never mix in a version or the cache."""
    batch_size: int

    @property
    @abstractmethod
    def dimension(self) -> int: ...

    def expect_dimension(self, stored: int) -> None:
        """The width the collection stores (an API model's answers are checked against it)."""
        return None

    @property
    @abstractmethod
    def max_tokens(self) -> int:
        """The longest input (special tokens included) the model embeds without truncating."""

    @property
    def default_chunk_tokens(self) -> int:
        """Tokens per chunk when collections.yml sets none."""
        return self.max_tokens

    @property
    @abstractmethod
    def chunk_tokenizer(self) -> Any:
        """A tokenizer for chunking, which may run in another thread than the encoding."""

    query_prompt: str
    document_prompt: str
    """Prepended to each text of its side (resolved: collections.yml's, else the model's own, else "")."""

    @cached_property
    def document_prompt_tokens(self) -> int:
        """Tokens the document prompt takes from each chunk's budget."""
        if not self.document_prompt:
            return 0
        return len(self.chunk_tokenizer(self.document_prompt, add_special_tokens=False, verbose=False)["input_ids"])

    @abstractmethod
    def encode_documents(self, texts: list[str]) -> np.ndarray:
        """Normalised float32 vectors of chunk texts, through the model's document side."""

    @abstractmethod
    def encode_queries(self, texts: list[str]) -> np.ndarray:
        """Normalised float32 vectors of queries, through the model's query side."""

    def embed_query(self, text: str) -> np.ndarray:
        return self.encode_queries([text])[0]

    def last_call_tokens(self) -> Tokens:
        """The API tokens this thread's last encode call spent (a local model spends none)."""
        return Tokens()
