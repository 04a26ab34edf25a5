"""SuffixDecoding (Snowflake's Arctic Inference; vLLM's `suffix` method): model-free drafts from
suffix trees over what the engine has seen. Two trees:

- the request's own, over its prompt and output so far, kept on its SpecState (it goes with the
  request: finished, aborted or failed) and grown by the tokens added since the last proposal;
- the engine's, over the outputs of the last `max_cached_requests` finished requests (each with
  the end of its prompt, so a reply's first tokens are drafted too), oldest evicted first, at most
  `max_cached_tokens` tokens: agentic loops, tool calls and JSON answers repeat across requests.

At each step the longest suffix of the sequence (up to max_tree_depth - k tokens, at least 1) found
in a tree picks a node, and the draft follows the most frequent child while the path's empirical
probability stays >= min_token_prob, at most max_spec_factor x the match length tokens. Of the two
trees' drafts the one with more tokens expected to be accepted (the sum of its prefix probabilities)
wins; the per-step cost is a few walks of at most max_tree_depth nodes per tree.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from livecast.engine.spec.suffix_tree import Source, SuffixTree


@dataclass(slots=True, weakref_slot=True)
class RequestTree:
    """One request's tree over its own tokens, on its SpecState."""

    tree: SuffixTree
    source: Source = field(default_factory=Source)


@dataclass(slots=True)
class SuffixProposer:
    max_tree_depth: int = 24
    max_cached_requests: int = 1000
    max_cached_tokens: int = 200_000  # global tree: a few lazy/explicit nodes per token
    prompt_context_tokens: int = 8  # the end of a finished request's prompt indexed with its output
    max_spec_factor: float = 1.0  # draft length <= this x the match length
    min_token_prob: float = 0.1
    global_tree: SuffixTree = field(init=False)
    cached: deque[Source] = field(init=False)
    num_cached_tokens: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.max_cached_requests < 0 or self.max_cached_tokens < 0 or self.prompt_context_tokens < 0:
            raise ValueError("max_cached_requests, max_cached_tokens and prompt_context_tokens must be >= 0")
        if self.max_spec_factor <= 0 or not 0 <= self.min_token_prob <= 1:
            raise ValueError(f"need max_spec_factor > 0 and 0 <= min_token_prob <= 1, got "
                             f"{self.max_spec_factor}, {self.min_token_prob}")
        self.global_tree = SuffixTree(self.max_tree_depth)
        self.cached = deque()

    def propose(self, token_ids: list[int], k: int, state=None) -> list[int]:
        """Up to `k` tokens after `token_ids`; `state` (the request's SpecState) keeps the request's
        tree between calls, which then only indexes the tokens added since."""
        if k <= 0 or not token_ids:
            return []
        local = self._request_tree(token_ids, state)
        # room below the match for k explicit levels (lazy chains read on regardless)
        max_match = min(len(token_ids), max(1, self.max_tree_depth - k))
        pattern = token_ids[-max_match:]
        # the request's own tail is in its tree: a match needs a second path, and the tail's own
        # path, which ends at the match, is left out of the probabilities
        best, best_score = self._draft(local.tree, pattern, k, own=1)
        if self.cached:
            draft, score = self._draft(self.global_tree, pattern, k, own=0)
            if score > best_score:
                best = draft
        return best

    def request_finished(self, prompt_token_ids: list[int], output_token_ids: list[int]) -> None:
        """Index a finished request's output (after the end of its prompt) in the global tree,
        evicting the oldest outputs past the bounds."""
        if not output_token_ids or self.max_cached_requests == 0:
            return
        context = list(prompt_token_ids[-self.prompt_context_tokens:]) if self.prompt_context_tokens else []
        tokens = (context + list(output_token_ids))[-self.max_cached_tokens:]
        if not tokens:
            return
        source = Source()
        self.global_tree.extend(source, tokens)
        self.global_tree.close(source)
        self.cached.append(source)
        self.num_cached_tokens += len(tokens)
        while len(self.cached) > self.max_cached_requests or self.num_cached_tokens > self.max_cached_tokens:
            old = self.cached.popleft()
            self.num_cached_tokens -= old.num_indexed
            self.global_tree.remove(old)

    def _request_tree(self, token_ids: list[int], state) -> RequestTree:
        local = getattr(state, "proposer_state", None)
        if not isinstance(local, RequestTree) or not _extends(local.source, token_ids):
            local = RequestTree(SuffixTree(self.max_tree_depth))
            if state is not None:
                state.proposer_state = local
        local.tree.extend(local.source, token_ids[local.source.num_indexed:])
        return local

    def _draft(self, tree: SuffixTree, pattern: list[int], k: int, own: int) -> tuple[list[int], float]:
        # the longest matching suffix, by bisection: a suffix that matches has every shorter one matching
        lo, hi, found = 0, len(pattern), None
        while lo < hi:
            mid = (lo + hi + 1) // 2
            at = tree.walk(pattern[-mid:], explicit_only=own > 0)
            if at is not None and at[0].count > own:
                lo, found = mid, at
            else:
                hi = mid - 1
        if found is None:
            return [], 0.0
        node, offset = found
        max_tokens = min(k, max(1, int(self.max_spec_factor * lo)))
        return tree.follow(node, offset, node.count - own, max_tokens, self.min_token_prob)


def _extends(source: Source, token_ids: list[int]) -> bool:
    n = source.num_indexed
    return len(token_ids) >= n and (n == 0 or token_ids[n - 1] == source.tokens[n - 1])
