"""The graph of the IR: ``ggml_cgraph``'s ``nodes`` and ``leafs``, filled by ``ggml_build_forward_expand``'s walk.

``expand(root)`` is ``ggml_visit_parents`` (ggml.c@676f0e71b): a post-order depth-first walk over ``src[0..]``,
skipping tensors already visited; ``view_src`` is not followed. Tensors with op NONE become ``leafs``, all others
(views included) ``nodes``; unnamed ones are named ``leaf_%d`` / ``node_%d`` when visited. Re-exported by
:mod:`mlaref.reference.graphs.ir`, whose tensors it walks (anything with ``op``, ``src`` and ``name``).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Graph"]


class Graph:
    """``ggml_cgraph``: ``nodes`` and ``leafs`` in the order ``build_forward_expand`` visits them."""

    def __init__(self):
        self.nodes: list = []
        self.leafs: list = []
        self._visited: set[int] = set()

    def expand(self, root):
        """``ggml_build_forward_expand``: post-order DFS over ``src[0..]`` (iterative, same order)."""
        visited = self._visited
        if id(root) in visited:
            return root
        visited.add(id(root))
        stack = [(root, 0)]
        while stack:
            node, i = stack[-1]
            srcs = node.src
            pushed = False
            while i < len(srcs):
                s = srcs[i]
                i += 1
                if s is not None and id(s) not in visited:
                    visited.add(id(s))
                    stack[-1] = (node, i)
                    stack.append((s, 0))
                    pushed = True
                    break
            if pushed:
                continue
            stack.pop()
            if node.op == "NONE":
                if not node.name:
                    node.name = f"leaf_{len(self.leafs)}"
                self.leafs.append(node)
            else:
                if not node.name:
                    node.name = f"node_{len(self.nodes)}"
                self.nodes.append(node)
        return root

    def find(self, name: str) :
        """The node or leaf called ``name`` (the first one in graph order)."""
        for t in self.nodes:
            if t.name == name:
                return t
        for t in self.leafs:
            if t.name == name:
                return t
        raise KeyError(name)

    def index(self, name: str) -> int:
        for i, t in enumerate(self.nodes):
            if t.name == name:
                return i
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.nodes)

    def ops(self) -> Iterable[str]:
        return (t.op for t in self.nodes)
