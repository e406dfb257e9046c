"""A CLIP tokenizer built offline and deterministically from the captions' words (no downloads):
byte-level BPE with CLIP's ``</w>`` end-of-word suffix, merges learned by a small deterministic
loop until every caption word is one token. Saved with the pipeline, so ``from_pretrained``
reloads it with identical ids."""

from __future__ import annotations

from collections import Counter


def _alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())   # the set comes back in random order


def build_tokenizer(words: list[str], max_length: int = 16):
    """A ``CLIPTokenizer`` whose vocabulary holds every word of ``words`` as one token."""
    from transformers import CLIPTokenizer

    counts = Counter(w.lower() for w in words)
    symbols = {w: [*w[:-1], w[-1] + "</w>"] for w in counts}
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for word, n in counts.items():
            parts = symbols[word]
            for a, b in zip(parts, parts[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        for word in counts:
            parts, out, i = symbols[word], [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    out.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    out.append(parts[i])
                    i += 1
            symbols[word] = out
    alphabet = _alphabet()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length, pad_token="<|endoftext|>")
