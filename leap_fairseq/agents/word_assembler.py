"""Turn a stream of SentencePiece pieces into whole detokenized words."""

from dataclasses import dataclass, field
from typing import Callable, List

WORD_BOUNDARY = "\u2581"  # "▁", SentencePiece's marker for a piece that starts a word


def decode_sentencepiece(pieces: str) -> str:
    """Detokenize space-separated SentencePiece pieces the way fairseq's ``SentencepieceBPE.decode`` does."""
    return pieces.replace(" ", "").replace(WORD_BOUNDARY, " ").strip()


@dataclass
class WordAssembler:
    """Hold SentencePiece pieces until the word they belong to is complete.

    A word is complete when the next piece starts a new word (it begins with ``▁``) or when
    the sentence ends (:meth:`flush`). Completed words are detokenized with ``decode``, which
    gets the word's pieces joined by spaces, as fairseq's BPE decoders expect.

    Attributes:
        decode: detokenizer for space-separated pieces; defaults to fairseq's SentencePiece rule.
        held: pieces of the word that is not complete yet.
    """

    decode: Callable[[str], str] = decode_sentencepiece
    held: List[str] = field(default_factory=list)

    def reset(self) -> None:
        """Drop the held pieces, ready for a new sentence."""
        self.held = []

    def push(self, piece: str) -> List[str]:
        """Add one piece and return the words it completes (zero or one word)."""
        words: List[str] = []
        if piece.startswith(WORD_BOUNDARY) and self.held:
            words = self._release()
        self.held.append(piece)
        return words

    def flush(self) -> List[str]:
        """Return the held word, if any, as complete (the sentence has ended)."""
        return self._release()

    def _release(self) -> List[str]:
        text = self.decode(" ".join(self.held)) if self.held else ""
        self.held = []
        # A lone "▁" piece decodes to nothing, and a decoder may split a piece sequence into
        # several words, so the text is split on whitespace.
        return text.split()
