"""Text for text-to-image families: the project's BPE tokenizer (`bpe`) and its workdir copy."""

from research.text.bpe import TextTokenizer, train_tokenizer

__all__ = ["TextTokenizer", "train_tokenizer"]
