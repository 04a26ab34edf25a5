"""An offline CLIP tokenizer for the demo model: byte-level BPE learned in code, no hub files.

CLIP's tokenizer is byte-level BPE whose word-final symbols carry a `</w>` suffix. The vocab
built here has the same shape (256 byte symbols, their `</w>` forms, learned merges, the two
special tokens), so `CLIPTokenizer` and diffusers' pipelines use it exactly like the real one.
Merges are learned greedily from a small built-in word list, so common prompt words are one token
and any other text still tokenizes (byte fallback), making a 77-token context go a long way.
"""
from __future__ import annotations

from collections import Counter

from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
MODEL_MAX_LENGTH = 77  # CLIP's context, which SD UNets' cross-attention is trained against

# Words that appear in image prompts; the merges are learned from them.
_PROMPT_WORDS = """
a an the of in on with and or by at to from for as is are photo photograph painting portrait
landscape city street forest mountain mountains river lake ocean sea sky cloud clouds sun sunset
sunrise night day light dark shadow shadows fire water ice snow rain storm desert beach island
garden flower flowers tree trees grass field stone rock castle house tower bridge road car train
ship boat robot cat dog bird horse dragon fish man woman girl boy child face eyes hair hands
person people crowd king queen knight wizard astronaut warrior monster alien space planet star
stars galaxy moon neon cyberpunk steampunk fantasy futuristic ancient medieval modern abstract
surreal cinematic dramatic epic beautiful detailed intricate highly realistic photorealistic
hyperrealistic sharp focus soft lighting studio volumetric golden hour bokeh depth octane render
unreal engine digital art illustration concept oil watercolor acrylic sketch drawing pencil ink
anime cartoon comic pixel style artstation trending masterpiece best quality high resolution
red orange yellow green blue purple pink black white gray grey brown gold silver colorful vibrant
pastel glowing shiny metallic glass crystal wooden marble paper cloth smoke fog mist dust
wide angle close up macro aerial view top down background foreground texture pattern geometric
""".split()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode symbols."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def learn_merges(words: list[str], max_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties broken by the pair).

    Pair counts are updated only for the words a merge touches, so learning stays ~50 ms.
    """
    corpus = Counter(tuple(w[:-1]) + (w[-1] + END_OF_WORD,) for w in words if w)
    words_list = [list(symbols) for symbols in corpus]
    counts = [corpus[tuple(symbols)] for symbols in words_list]
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, symbols in enumerate(words_list):
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] += counts[i]
            where.setdefault(pair, set()).add(i)
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges and pairs:
        # Sorting makes the result independent of dict order: same merges on every machine.
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for i in sorted(where.pop(best, ())):
            symbols = words_list[i]
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] -= counts[i]
                if pairs[pair] <= 0:
                    del pairs[pair]
            merged, j = [], 0
            while j < len(symbols):
                if j + 1 < len(symbols) and (symbols[j], symbols[j + 1]) == best:
                    merged.append(symbols[j] + symbols[j + 1])
                    j += 2
                else:
                    merged.append(symbols[j])
                    j += 1
            words_list[i] = merged
            for pair in zip(merged, merged[1:]):
                pairs[pair] += counts[i]
                where.setdefault(pair, set()).add(i)
    return merges


def build_vocab(max_merges: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP-shaped vocab (bytes, bytes + `</w>`, merged symbols, specials) and its merges."""
    byte_symbols = list(bytes_to_unicode().values())
    tokens = byte_symbols + [s + END_OF_WORD for s in byte_symbols]
    merges = learn_merges(_PROMPT_WORDS, max_merges)
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {t: i for i, t in enumerate(tokens)}, merges


def build_demo_tokenizer(max_merges: int = 2000) -> CLIPTokenizer:
    """A CLIPTokenizer over a byte-level BPE vocab learned in code (works fully offline)."""
    vocab, merges = build_vocab(max_merges)
    return CLIPTokenizer(vocab=vocab, merges=merges, bos_token=BOS_TOKEN,
                         eos_token=EOS_TOKEN, unk_token=EOS_TOKEN, pad_token=EOS_TOKEN,
                         model_max_length=MODEL_MAX_LENGTH)
