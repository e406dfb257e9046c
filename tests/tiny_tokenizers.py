"""Tokenizers built offline and deterministically from a few sentences (no downloads).

The recipes follow ../shared/reference/offline_tiny_pipelines.md: byte-level BPE vocabularies for
CLIP and Roberta (specials first, the sorted 256-char ByteLevel alphabet, merges learned by a small
deterministic loop, ties broken by the pair), a hand-written Unigram list for T5. Shared by the
tiny-pipeline helpers of the image, audio and video tests.
"""

from __future__ import annotations

from collections import Counter

CORPUS = [
    "a red circle on the left", "a blue square at the top", "a green triangle on the right",
    "a photo of a cat", "a hammer hitting a wooden surface", "blurry, low quality, oversaturated",
    "a dog running on the beach at sunset", "piano music with soft drums", "a rising tone",
]


def _alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())  # the set comes back in random order


def _words(sentences: list[str], lower: bool) -> Counter:
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = Counter()
    for sentence in sentences:
        for word, _ in pre.pre_tokenize_str(sentence.lower() if lower else sentence):
            words[word] += 1
    return words


def _learn_merges(words: Counter, symbols: dict[str, list[str]], num_merges: int) -> list[tuple[str, str]]:
    merges = []
    for _ in range(num_merges):
        pairs = Counter()
        for word, count in words.items():
            parts = symbols[word]
            for a, b in zip(parts, parts[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        for word in words:
            parts, out, i = symbols[word], [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            symbols[word] = out
    return merges


def clip_tokenizer(max_length: int = 77, num_merges: int = 120, sentences: list[str] | None = None):
    """A CLIPTokenizer (``<|startoftext|>`` = 0, ``<|endoftext|>`` = 1 = pad)."""
    from transformers import CLIPTokenizer

    alphabet = _alphabet()
    words = _words(sentences or CORPUS, lower=True)
    symbols = {w: [*w[:-1], w[-1] + "</w>"] for w in words}
    merges = _learn_merges(words, symbols, num_merges)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token="<|endoftext|>")


def roberta_tokenizer(max_length: int = 77, num_merges: int = 100, sentences: list[str] | None = None):
    """A RobertaTokenizer with Roberta's special ids (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` 4)."""
    from transformers import RobertaTokenizer

    alphabet = _alphabet()
    words = _words(sentences or CORPUS, lower=False)
    symbols = {w: list(w) for w in words}
    merges = _learn_merges(words, symbols, num_merges)
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])}
    for token in alphabet + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def t5_tokenizer(max_length: int = 32, sentences: list[str] | None = None):
    """A T5Tokenizer (pad 0, eos 1, unk 2) over a hand-written Unigram list: corpus words are one
    piece each, anything else falls back to characters."""
    import string

    from transformers import T5Tokenizer

    words = sorted({w for s in (sentences or CORPUS) for w in s.replace(",", " ,").split()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -3.0)]
    vocab += [("\u2581" + w, -2.0) for w in words]
    vocab += [(c, -5.0) for c in string.printable if not c.isspace()]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)
