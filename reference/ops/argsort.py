"""argsort: per-row sort permutation of an f32 tensor (``ggml_argsort``; ``ggml_compute_forward_argsort_f32``).

``a`` is f32 ``[ne0, ne1, ne2, ne3]`` with packed rows; the result is a new contiguous **i32** tensor of the same
shape whose row ``r`` lists the indices ``0..ne0-1`` of row ``r`` of ``a`` in ``order`` ("asc" or "desc",
``GGML_SORT_ORDER_ASC`` = 0 / ``DESC`` = 1). ``ggml_top_k(a, k)`` is the view of the first ``k`` columns of the
descending argsort; the MoE router takes the top 6 of 64 expert probabilities per token (upstream facts §3.3).

Values compare with C float ``<`` / ``>``: any comparison with NaN is false, and -0 equals +0. Which of several
equal values comes first depends on the sorting algorithm, and the two ggml versions use different ones:

* ``algorithm="exchange"`` (ik_llama.cpp@676f0e71b, ggml.c): an exchange sort on the index array,
  ``for j: for k > j: if (asc ? x[i_j] > x[i_k] : x[i_j] < x[i_k]) swap(i_j, i_k)``. It is not stable: ascending
  ``[1, 1, 0]`` gives ``[2, 1, 0]`` (the 0 swaps with the first 1, which then sits behind the second).
* ``algorithm="std_sort"`` (upstream ggml, ggml-cpu/ops.cpp): ``std::sort`` with the comparator
  ``x[a] < x[b]`` (asc) or ``x[a] > x[b]`` (desc), as GCC's libstdc++ implements it (bits/stl_algo.h,
  bits/stl_heap.h): introsort with depth limit ``2*floor(log2 n)``, median-of-three of
  ``(first+1, mid, last-1)`` moved to ``first``, Hoare partition with an unguarded pivot, heapsort when the depth
  runs out, partitions of at most 16 left alone, then insertion sort (guarded over the first 16, unguarded
  after). Rows of at most 16 values are therefore insertion-sorted, which is stable.

Without ties (and without NaN) both give the unique sorted order. The reference default is ik_llama.cpp's
exchange sort (the graph the project models); the tests check ``std_sort`` byte for byte against ggml-python.
"""

from __future__ import annotations

import numpy as np

from mlaref.reference.ops._common import check_rows_contiguous, check_tensor
from mlaref.reference.tensor import Tensor

__all__ = ["argsort", "ORDERS", "ALGORITHMS", "std_sort_indices", "exchange_sort_indices"]

ORDERS = ("asc", "desc")
ALGORITHMS = ("exchange", "std_sort")
_THRESHOLD = 16  # libstdc++'s _S_threshold


def exchange_sort_indices(x: np.ndarray, desc: bool) -> np.ndarray:
    """ik_llama.cpp's exchange sort of rows ``x`` (R, n) float32, vectorised over the rows: int32 (R, n)."""
    r, n = x.shape
    idx = np.broadcast_to(np.arange(n, dtype=np.int32), (r, n)).copy()
    rows = np.arange(r)
    for j in range(n):
        for k in range(j + 1, n):
            xj, xk = x[rows, idx[:, j]], x[rows, idx[:, k]]
            swap = (xj < xk) if desc else (xj > xk)
            if swap.any():
                ij = idx[:, j].copy()
                idx[:, j] = np.where(swap, idx[:, k], ij)
                idx[:, k] = np.where(swap, ij, idx[:, k])
    return idx


def std_sort_indices(v, desc: bool, stats: dict | None = None) -> list:
    """libstdc++ ``std::sort(idx, idx + n, cmp)`` of ``idx = [0, .., n-1]`` with ``cmp(a, b) = v[a] < v[b]``
    (``>`` for ``desc``); ``v`` a list of Python floats (float32 values), or any sequence whose items compare.
    Returns the sorted index list. ``stats`` (a dict) receives ``heapsorts``: how many sub-ranges ran out of
    depth and were heap-sorted."""
    n = len(v)
    if desc:
        def less(a, b):
            return v[a] > v[b]
    else:
        def less(a, b):
            return v[a] < v[b]
    s = list(range(n))

    def adjust_heap(first, hole, length, value):  # std::__adjust_heap then std::__push_heap
        top = hole
        child = hole
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if less(s[first + child], s[first + child - 1]):
                child -= 1
            s[first + hole] = s[first + child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            s[first + hole] = s[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and less(s[first + parent], value):
            s[first + hole] = s[first + parent]
            hole = parent
            parent = (hole - 1) // 2
        s[first + hole] = value

    def heap_sort(first, last):  # std::__partial_sort(first, last, last): make_heap, then sort_heap
        if stats is not None:
            stats["heapsorts"] = stats.get("heapsorts", 0) + 1
        length = last - first
        if length >= 2:
            parent = (length - 2) // 2
            while True:
                adjust_heap(first, parent, length, s[first + parent])
                if parent == 0:
                    break
                parent -= 1
        while last - first > 1:
            last -= 1
            value = s[last]
            s[last] = s[first]
            adjust_heap(first, 0, last - first, value)

    def median_to_first(result, a, b, c):  # std::__move_median_to_first
        if less(s[a], s[b]):
            if less(s[b], s[c]):
                m = b
            elif less(s[a], s[c]):
                m = c
            else:
                m = a
        elif less(s[a], s[c]):
            m = a
        elif less(s[b], s[c]):
            m = c
        else:
            m = b
        s[result], s[m] = s[m], s[result]

    def partition_pivot(first, last):  # std::__unguarded_partition_pivot
        mid = first + (last - first) // 2
        median_to_first(first, first + 1, mid, last - 1)
        lo, hi, pivot = first + 1, last, s[first]
        while True:
            while less(s[lo], pivot):
                lo += 1
            hi -= 1
            while less(pivot, s[hi]):
                hi -= 1
            if not lo < hi:
                return lo
            s[lo], s[hi] = s[hi], s[lo]
            lo += 1

    def introsort(first, last, depth):
        while last - first > _THRESHOLD:
            if depth == 0:
                heap_sort(first, last)
                return
            depth -= 1
            cut = partition_pivot(first, last)
            introsort(cut, last, depth)
            last = cut

    def linear_insert(i):  # std::__unguarded_linear_insert
        val = s[i]
        while less(val, s[i - 1]):
            s[i] = s[i - 1]
            i -= 1
        s[i] = val

    def insertion_sort(first, last):
        for i in range(first + 1, last):
            if less(s[i], s[first]):
                val = s[i]
                s[first + 1 : i + 1] = s[first:i]
                s[first] = val
            else:
                linear_insert(i)

    if n > 1:
        introsort(0, n, 2 * (n.bit_length() - 1))
        if n > _THRESHOLD:
            insertion_sort(0, _THRESHOLD)
            for i in range(_THRESHOLD, n):
                linear_insert(i)
        else:
            insertion_sort(0, n)
    return s


def argsort(a: Tensor, order: str = "asc", algorithm: str = "exchange") -> Tensor:
    """``ggml_argsort(a, order)``: i32 indices sorting each row (``algorithm`` as in the module docstring)."""
    check_tensor("argsort", "a", a, ("f32",))
    check_rows_contiguous("argsort", "a", a)
    if order not in ORDERS:
        raise ValueError(f"argsort: order must be 'asc' or 'desc', got {order!r}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"argsort: algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    if a.ne[0] >= 2**31:
        raise ValueError(f"argsort: a row of {a.ne[0]} values does not fit i32 indices")
    x = a.to_numpy().reshape(-1, a.ne[0])
    desc = order == "desc"
    if algorithm == "exchange":
        idx = exchange_sort_indices(x, desc)
    else:
        idx = np.array([std_sort_indices(row.tolist(), desc) for row in x], dtype=np.int32).reshape(x.shape)
    dst = Tensor.empty("i32", a.ne)
    dst.storage()[...] = idx.reshape(dst.storage().shape)
    return dst
