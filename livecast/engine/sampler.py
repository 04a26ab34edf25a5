"""Batched logits processing and sampling: bans, logit bias, grammar masks, penalties, temperature,
top-k/p, min-p.

Every row is processed in one set of tensor ops. Random rows are drawn by inverse transform:
one uniform number per row picks the first token whose cumulative probability passes it. That
costs one cumsum over the vocabulary, where an exponential race needs a logarithm of fresh noise
for every token (on a CPU, 0.9 ms against ~60 ms per step for 32 seeded rows of a 49k
vocabulary). Seeded rows draw their number from their own request's generator, so their
samples do not depend on who else is in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from livecast.engine.sampling_params import SamplingParams


@dataclass(slots=True)
class SamplingRow:
    params: SamplingParams
    token_ids: list[int]  # prompt + output so far
    num_prompt_tokens: int
    generator: torch.Generator | None
    banned_token_ids: list[int]  # eos / stop ids while below min_tokens
    grammar_matcher: object | None = None


@dataclass(slots=True)
class SamplerOutput:
    token_ids: list[int]
    logprobs: list[float]  # raw model log-probability of each sampled token
    top_logprobs: list[dict[int, float] | None]


def _column(rows, fn, dtype, device) -> torch.Tensor:
    return torch.tensor([fn(r.params) for r in rows], dtype=dtype, device=device)


def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    num_rows, vocab = logits.shape
    device = logits.device
    max_out = max(len(r.token_ids) - r.num_prompt_tokens for r in rows)
    max_prompt = max(r.num_prompt_tokens for r in rows)
    out_ids = torch.full((num_rows, max(max_out, 1)), vocab, dtype=torch.int64)
    prompt_ids = torch.full((num_rows, max(max_prompt, 1)), vocab, dtype=torch.int64)
    for i, r in enumerate(rows):
        out = r.token_ids[r.num_prompt_tokens:]
        if out:
            out_ids[i, :len(out)] = torch.tensor(out)
        if r.params.repetition_penalty != 1.0:
            prompt_ids[i, :r.num_prompt_tokens] = torch.tensor(r.token_ids[:r.num_prompt_tokens])
    # one spare column swallows the padding id `vocab`
    counts = torch.zeros((num_rows, vocab + 1), device=device)
    counts.scatter_add_(1, out_ids.to(device), torch.ones_like(out_ids, dtype=counts.dtype, device=device))
    counts = counts[:, :vocab]
    in_prompt = torch.zeros((num_rows, vocab + 1), dtype=torch.bool, device=device)
    in_prompt.scatter_(1, prompt_ids.to(device), True)
    seen = in_prompt[:, :vocab] | (counts > 0)

    rep = _column(rows, lambda p: p.repetition_penalty, torch.float32, device)[:, None]
    pres = _column(rows, lambda p: p.presence_penalty, torch.float32, device)[:, None]
    freq = _column(rows, lambda p: p.frequency_penalty, torch.float32, device)[:, None]
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    return logits - freq * counts - pres * (counts > 0).to(logits.dtype)


def apply_bitmask(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Allowed tokens from each grammar matcher as an int32 bitmask, applied to all rows at once."""
    import xgrammar as xgr

    num_rows, vocab = logits.shape
    bitmask = xgr.allocate_token_bitmask(num_rows, vocab)  # all bits set: every token allowed
    for i, r in enumerate(rows):
        if r.grammar_matcher is not None and not r.grammar_matcher.is_terminated():
            r.grammar_matcher.fill_next_token_bitmask(bitmask, i)
    bits = torch.arange(32, dtype=torch.int32)
    allowed = ((bitmask[:, :, None] >> bits) & 1).bool().flatten(1)[:, :vocab]
    return logits.masked_fill(~allowed.to(logits.device), float("-inf"))


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> SamplerOutput:
    """logits (num_rows, vocab) fp32 -> one token per row."""
    num_rows, vocab = logits.shape
    device = logits.device
    raw_logits = logits

    banned = [(i, t) for i, r in enumerate(rows) for t in r.banned_token_ids if t < vocab]
    if banned:
        idx = torch.tensor(banned, device=device)
        logits = logits.index_put((idx[:, 0], idx[:, 1]), torch.tensor(float("-inf"), device=device))
    biased = [(i, t, b) for i, r in enumerate(rows) for t, b in (r.params.logit_bias or {}).items() if t < vocab]
    if biased:
        rows_idx, cols_idx, bias = zip(*biased)
        logits = logits.index_put((torch.tensor(rows_idx, device=device), torch.tensor(cols_idx, device=device)),
                                  torch.tensor(bias, dtype=logits.dtype, device=device), accumulate=True)
    if any(r.grammar_matcher is not None for r in rows):
        logits = apply_bitmask(logits, rows)
    if any(r.params.repetition_penalty != 1.0 or r.params.presence_penalty or r.params.frequency_penalty
           for r in rows):
        logits = apply_penalties(logits, rows)

    greedy = _column(rows, lambda p: p.temperature == 0.0, torch.bool, device)
    token_ids = logits.argmax(dim=-1)
    if not bool(greedy.all()):
        temperature = _column(rows, lambda p: p.temperature or 1.0, torch.float32, device)
        scaled = logits / temperature[:, None]
        scaled = _top_k_top_p_min_p(scaled, rows)
        sampled = draw(torch.softmax(scaled, dim=-1), rows)
        token_ids = torch.where(greedy, token_ids, sampled)

    # log-probabilities of the raw model output (before penalties, masks and temperature)
    want_top = any(r.params.logprobs is not None for r in rows)
    if want_top:
        raw_logprobs = torch.log_softmax(raw_logits, dim=-1)
        chosen = raw_logprobs.gather(1, token_ids[:, None])[:, 0]
    else:
        chosen = raw_logits.gather(1, token_ids[:, None])[:, 0] - torch.logsumexp(raw_logits, dim=-1)
    max_k = max((r.params.logprobs or 0) for r in rows)
    top: list[dict[int, float] | None] = [None] * num_rows
    token_list = token_ids.tolist()
    chosen_list = chosen.tolist()
    if want_top:
        top_vals, top_ids = raw_logprobs.topk(max(max_k, 1), dim=-1)
        top_vals, top_ids = top_vals.tolist(), top_ids.tolist()
        for i, r in enumerate(rows):
            if r.params.logprobs is None:
                continue
            k = r.params.logprobs
            entry = {token_list[i]: chosen_list[i]}
            entry.update({t: v for t, v in zip(top_ids[i][:k], top_vals[i][:k]) if t not in entry})
            top[i] = entry
    return SamplerOutput(token_list, chosen_list, top)


def draw(probs: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """One token per row of `probs` (num_rows, vocab): the first whose cumulative probability
    exceeds u * total, u ~ U[0, 1) from the row's generator when it has one. The cumsum runs in
    float64: in float32 its rounding over a 49k vocabulary (~1e-5) is as large as a flat
    distribution's token masses, so tiny batch-dependent logit differences picked a neighbour."""
    device = probs.device
    u = torch.rand(len(rows), device=device)
    for i, r in enumerate(rows):
        if r.generator is not None and r.params.temperature > 0:
            u[i] = torch.rand((), generator=r.generator, device=device)
    cdf = probs.double().cumsum(dim=-1)
    picked = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None], right=True)[:, 0]
    picked.clamp_(max=probs.shape[-1] - 1)
    # u * total rounding up to the total would land past the last allowed token: take the likeliest
    stray = probs.gather(1, picked[:, None])[:, 0] == 0
    return torch.where(stray, probs.argmax(dim=-1), picked)


def _top_k_top_p_min_p(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    vocab = logits.shape[-1]
    top_k = [r.params.top_k or vocab for r in rows]
    top_p = [r.params.top_p for r in rows]
    min_p = [r.params.min_p for r in rows]
    device = logits.device
    if any(k < vocab for k in top_k) or any(p < 1.0 for p in top_p):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=device)[None, :]
        remove = ranks >= torch.tensor(top_k, device=device)[:, None]
        probs = torch.softmax(sorted_logits.masked_fill(remove, float("-inf")), dim=-1)
        # drop tokens once the mass before them already reaches top_p (the first always stays)
        mass_before = probs.cumsum(dim=-1) - probs
        remove |= mass_before >= torch.tensor(top_p, device=device)[:, None]
        remove[:, 0] = False
        logits = logits.scatter(1, order, sorted_logits.masked_fill(remove, float("-inf")))
    if any(p > 0.0 for p in min_p):
        probs = torch.softmax(logits, dim=-1)
        threshold = probs.max(dim=-1, keepdim=True).values * torch.tensor(min_p, device=device)[:, None]
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    return logits
