"""A depth-bounded suffix trie with counts, for SuffixDecoding (Snowflake's Arctic Inference).

Every position j of every indexed token list starts a path: its next `max_depth` tokens. A node
counts the paths through it, so at the node a pattern leads to, child.count / node.count is the
empirical probability of the child's token following the pattern.

A node on one path only (count 1) is lazy: instead of a chain of one-child nodes it points at where
its path goes on in its source list, and it is expanded a level when a second path reaches it. Plain
text then costs a few nodes per token rather than `max_depth`, and a lazy chain reads on past
`max_depth` for free. Appending a token costs O(max_depth): each path that started in the last
`max_depth` tokens and is still explicit gets one child.
"""
from __future__ import annotations


class Source:
    """One indexed token list: its tokens, how many the trie holds, and its paths still growing."""

    __slots__ = ("tokens", "num_indexed", "open")

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.num_indexed = 0
        # (node, depth) per path started in the last max_depth - 1 tokens, newest first: the node
        # its tokens so far lead to, or the lazy node whose chain holds them
        self.open: list[tuple[Node, int]] = []


class Node:
    __slots__ = ("count", "children", "source", "pos")

    def __init__(self, count: int, source: Source | None = None, pos: int = 0) -> None:
        self.count = count
        # explicit: children by token; lazy (count 1): the path goes on at source.tokens[pos:]
        self.children: dict[int, Node] | None = None if source is not None else {}
        self.source, self.pos = source, pos


class SuffixTree:
    def __init__(self, max_depth: int) -> None:
        if max_depth < 2:
            raise ValueError(f"max_depth must be >= 2, got {max_depth}")
        self.max_depth = max_depth
        self.root = Node(0)
        self.num_nodes = 1

    def extend(self, source: Source, token_ids: list[int]) -> None:
        """Index `token_ids` as the continuation of `source`."""
        tokens, max_depth = source.tokens, self.max_depth
        for token in token_ids:
            i = len(tokens)
            tokens.append(token)
            self.root.count += 1
            grown = []
            # newest path first: a path that expands a lazy node is newer than the one the node
            # holds, which must then see the expansion before it grows
            for path_len, (node, depth) in enumerate([(self.root, 0)] + source.open):
                if node.children is not None:
                    while depth < path_len and node.children is not None:  # after an expansion
                        node = node.children[tokens[i - path_len + depth]]
                        depth += 1
                    if node.children is not None:
                        node, depth = self._add(node.children, token, source, i, depth + 1), depth + 1
                if path_len + 1 < max_depth:
                    grown.append((node, depth))
            source.open = grown
            source.num_indexed = i + 1

    def _add(self, children: dict[int, Node], token: int, source: Source, i: int, depth: int) -> Node:
        child = children.get(token)
        if child is None:
            child = children[token] = Node(1, source, i + 1)
            self.num_nodes += 1
        else:
            if child.children is None:  # lazy, now on a second path: one level explicit
                lazy, child.source, child.children = child.source, None, {}
                if child.pos < lazy.num_indexed and depth < self.max_depth:
                    child.children[lazy.tokens[child.pos]] = Node(1, lazy, child.pos + 1)
                    self.num_nodes += 1
            child.count += 1
        return child

    def close(self, source: Source) -> None:
        """No more tokens for `source`: its open paths end where they are."""
        source.open = []

    def remove(self, source: Source) -> None:
        """Forget every path of a closed `source` (a node left on no path goes with its subtree)."""
        tokens = source.tokens
        for j in range(source.num_indexed):
            self.root.count -= 1
            node = self.root
            for token in tokens[j:j + self.max_depth]:
                child = node.children[token]
                child.count -= 1
                if child.count == 0:
                    del node.children[token]
                    self.num_nodes -= _size(child)
                    break
                node = child
        source.num_indexed = 0

    def walk(self, pattern: list[int], explicit_only: bool = False) -> tuple[Node, int] | None:
        """Where `pattern` leads from the root: (node, tokens read into its lazy chain), or None
        when no path starts with it (or when it ends in a lazy chain and `explicit_only`)."""
        node, offset = self.root, 0
        for token in pattern:
            if node.children is not None:
                node = node.children.get(token)
                if node is None or (explicit_only and node.children is None):
                    return None
            else:
                index = node.pos + offset
                if index >= node.source.num_indexed or node.source.tokens[index] != token:
                    return None
                offset += 1
        return node, offset

    def follow(self, node: Node, offset: int, parent_count: int, max_tokens: int,
               min_prob: float) -> tuple[list[int], float]:
        """The likeliest path on from (node, offset), `parent_count` paths reaching it: the most
        frequent child each time, while the path's probability stays >= `min_prob`. Returns the
        tokens and their expected number accepted (the sum of the prefix probabilities)."""
        out: list[int] = []
        prob, score = 1.0, 0.0
        while len(out) < max_tokens:
            if node.children is None:  # one path: its source goes on, probability unchanged
                index = node.pos + offset
                if index >= node.source.num_indexed:
                    break
                token = node.source.tokens[index]
                offset += 1
            else:
                if not node.children:
                    break
                token, child = max(node.children.items(), key=_by_count)
                if prob * child.count / parent_count < min_prob:
                    break
                prob *= child.count / parent_count
                node, offset, parent_count = child, 0, child.count
            out.append(token)
            score += prob
        return out, score


def _by_count(item: tuple[int, Node]) -> int:
    return item[1].count


def _size(node: Node) -> int:
    stack, size = [node], 0
    while stack:
        node = stack.pop()
        size += 1
        if node.children:
            stack.extend(node.children.values())
    return size
