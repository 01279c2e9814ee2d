"""An independent byte-level BPE tokenizer over a GGUF file's vocabulary: the oracle for the
`tokenizer.json` that gguf_convert.py builds.

It shares no code with that path (no `tokenizers` library): it is OpenAI GPT-2's published
`encoder.py` algorithm (bytes → printable unicode, merge the lowest-ranked pair until none
applies) on `tokenizer.ggml.tokens` / `tokenizer.ggml.merges`, with the pre-tokenizer
regexes llama.cpp uses for the file's `tokenizer.ggml.pre` (llama-vocab.cpp): for "smollm",
"starcoder" and "refact" first every `\\p{N}` on its own, then GPT-2's pattern. Control tokens
(token type 3) in the text are matched as themselves, longest first, as llama.cpp does with
special-token parsing on."""

from functools import lru_cache

import regex

# GPT-2's pattern, as in OpenAI's encoder.py.
GPT2_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
DIGITS_FIRST = regex.compile(r"\p{N}|[^\p{N}]+")
SPLIT_DIGITS = {"gpt2": False, "default": False, "smollm": True, "starcoder": True, "refact": True}
CONTROL = 3


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


class GgufBpe:
    def __init__(self, tokens: list[str], token_types: list[int], merges: list[str], pre: str):
        if pre not in SPLIT_DIGITS:
            raise ValueError(f"pre-tokenizer {pre!r} has no reference regexes here")
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.ranks = {tuple(m.split(" ", 1)): rank for rank, m in enumerate(merges)}
        self.split_digits = SPLIT_DIGITS[pre]
        controls = sorted((t for t, kind in zip(tokens, token_types) if kind == CONTROL), key=len, reverse=True)
        self.controls = regex.compile("(" + "|".join(regex.escape(t) for t in controls) + ")") if controls else None
        self.byte_char = bytes_to_unicode()
        self._bpe = lru_cache(maxsize=None)(self._merge)

    def _merge(self, word: str) -> tuple[str, ...]:
        parts = tuple(word)
        while len(parts) > 1:
            pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = tuple(merged)
        return parts

    def _words(self, text: str) -> list[str]:
        chunks = DIGITS_FIRST.findall(text) if self.split_digits else [text]
        return [w for chunk in chunks for w in GPT2_PATTERN.findall(chunk)]

    def encode(self, text: str) -> list[int]:
        pieces = self.controls.split(text) if self.controls else [text]
        ids = []
        for n, piece in enumerate(pieces):
            if n % 2:  # a captured control token
                ids.append(self.vocab[piece])
                continue
            for word in self._words(piece):
                mapped = "".join(self.byte_char[b] for b in word.encode("utf-8"))
                ids.extend(self.vocab[t] for t in self._bpe(mapped))
        return ids
