"""Open a GGUF file: the bounded scan, then ``gguf.GGUFReader``, then a :class:`Model` of zero-copy tensors.

:func:`open_gguf` has two stages:

1. the bounded sanity scan of the header (:func:`mlaref.reference.gguf.scan.scan`), which rejects any file that
   would make the reader loop, crash or read outside the file;
2. ``gguf.GGUFReader`` (memory-mapped) does the actual parsing; any exception it still raises is wrapped.

Every tensor whose type mlaref implements becomes a :class:`mlaref.reference.tensor.Tensor` whose base buffer
*is* the reader's memory map (no copy); the others are listed in :attr:`Model.unsupported`. For a deepseek2
file the hyper-parameters and tensors are checked as llama.cpp's loader checks them
(:mod:`mlaref.reference.gguf.loader`), and :attr:`Model.attn_layout` says which attention layout it has (``ik``,
``both`` or ``mainline``: :data:`mlaref.reference.gguf.loader.ATTN_LAYOUTS`).

A file can be structurally sound (header, metadata and tensor table readable, every tensor inside the file) and
still not be a model llama.cpp loads (a required key or tensor absent, a shape the hyper-parameters contradict).
By default :func:`open_gguf` raises on the first such problem; ``open_gguf(path, lenient=True)`` returns the Model
with every one of them in :attr:`Model.problems` instead (``mlaref inspect`` prints the file, then the problems).
Structural errors raise in both modes.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, GGUFValueType, Keys

from mlaref.reference.gguf.errors import BadHeader, GGUFError, Truncated
from mlaref.reference.gguf.loader import (ARCH, attn_layout, check_tensors, expect_type, missing_keys, read_hparams,
                                          tensor_problems)
from mlaref.reference.gguf.scan import Scan, scan
from mlaref.reference.gguf.typemap import mlaref_type_name
from mlaref.reference.hparams import HParams
from mlaref.reference.tensor import Tensor

__all__ = ["TensorInfo", "Model", "open_gguf"]


@dataclass
class TensorInfo:
    """One tensor of the file as listed in its header."""

    name: str
    ggml_type: str  # gguf-py's name, e.g. "Q8_0"
    type: str | None  # the mlaref type name, None when mlaref does not implement it
    ne: tuple  # (ne0, ne1, ne2, ne3)
    n_dims: int
    nbytes: int
    offset: int  # absolute byte offset in the file

    @property
    def supported(self) -> bool:
        return self.type is not None


@dataclass
class Model:
    """An opened GGUF file: metadata, hyper-parameters and zero-copy tensors."""

    path: str
    version: int
    alignment: int
    data_offset: int
    arch: str | None
    metadata: Mapping = field(repr=False)  # key -> Python value (arrays: list), decoded on first access
    kv_types: dict = field(repr=False)  # key -> (GGUFValueType, element type or None, array length or None)
    infos: list = field(repr=False)  # TensorInfo, file order
    tensors: dict = field(repr=False)  # name -> Tensor, for every supported tensor
    hparams: dict | None = field(repr=False)  # llama.cpp field names; None for other architectures
    hp: HParams | None = None  # when mlaref.reference.hparams.HParams accepts the values
    hp_error: str | None = None
    reader: GGUFReader | None = field(default=None, repr=False)
    attn_layout: str | None = None  # deepseek2 only: "ik", "both" or "mainline" (loader.ATTN_LAYOUTS)
    # (key or tensor name, what is wrong) for every model-level problem; filled only by open_gguf(lenient=True)
    problems: list = field(default_factory=list)

    @property
    def unsupported(self) -> list:
        """TensorInfo of every tensor whose type mlaref does not implement."""
        return [ti for ti in self.infos if not ti.supported]

    def info(self, name: str) -> TensorInfo:
        for ti in self.infos:
            if ti.name == name:
                return ti
        raise KeyError(name)

    def raw(self, name: str) -> np.ndarray:
        """The bytes of any tensor (supported or not) as a read-only uint8 view of the file."""
        ti = self.info(name)
        return self.reader.data[ti.offset : ti.offset + ti.nbytes]

    def close(self) -> None:
        """Drop the memory map (tensors made from it stay valid while referenced)."""
        self.reader = None


def _field_value(f) -> Any:
    """Python value of a GGUFReader field (strings decoded leniently: values are not validated by ggml)."""
    t = f.types[0] if f.types else None
    if t == GGUFValueType.STRING:
        return bytes(f.parts[-1]).decode("utf-8", errors="replace")
    if t == GGUFValueType.ARRAY:
        if len(f.types) > 1 and f.types[1] == GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]
        return [f.parts[i].tolist()[0] for i in f.data]
    v = f.parts[-1].tolist()[0]
    return bool(v) if t == GGUFValueType.BOOL else v


class _LazyMeta(Mapping):
    """Metadata values by key; each is decoded on first access (a tokenizer holds 10^5 strings)."""

    def __init__(self, reader: GGUFReader, keys):
        self._reader = reader
        self._keys = list(keys)
        self._known = set(self._keys)
        self._cache: dict = {}

    def __getitem__(self, key):
        if key not in self._known:
            raise KeyError(key)
        if key not in self._cache:
            self._cache[key] = _field_value(self._reader.fields[key])
        return self._cache[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self):
        return len(self._keys)


def open_gguf(path, *, check_tensors: bool = True, lenient: bool = False) -> Model:
    """Open a GGUF file memory-mapped; raise a :class:`GGUFError` subclass on anything malformed.

    For ``general.architecture == "deepseek2"`` the hyper-parameters are read (:func:`read_hparams`) and, with
    ``check_tensors``, every tensor llama.cpp's ``llm_load_tensors`` creates is checked for presence and shape.
    With ``lenient`` those model-level problems (absent or mistyped keys, bad values, absent or misshapen tensors)
    do not raise: each is listed in :attr:`Model.problems` as ``(key or tensor, what is wrong)``.
    """
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        raise GGUFError(f"{path}: cannot open ({exc.strerror})") from None
    if size == 0:
        raise Truncated(f"{path}: empty file; a GGUF file starts with the 4-byte magic 'GGUF'")
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            found = scan(mm, size, path)
    except OSError as exc:
        raise GGUFError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # the scan should have caught it; never let a reader failure escape unnamed
        raise BadHeader(f"{path}: gguf.GGUFReader failed: {type(exc).__name__}: {exc}") from exc
    return _build_model(path, found, reader, check_tensors, lenient)


def _build_model(path: str, found: Scan, reader: GGUFReader, check: bool, lenient: bool = False) -> Model:
    """The Model over a scanned file and its reader: tensors as zero-copy views, then hparams and checks."""
    if len(reader.tensors) != len(found.tensors) or reader.data_offset != found.data_offset:
        raise BadHeader(f"{path}: gguf.GGUFReader and the header scan disagree on the tensor layout")
    meta = _LazyMeta(reader, found.kv_types)
    arch = None
    if Keys.General.ARCHITECTURE in found.kv_types:
        expect_type(path, found.kv_types, Keys.General.ARCHITECTURE, GGUFValueType.STRING)
        arch = meta[Keys.General.ARCHITECTURE]
    infos, tensors = [], {}
    for (name, ne, gtype, rel, nbytes) in found.tensors:
        n_dims = len(reader.tensors[len(infos)].shape)
        mtype = mlaref_type_name(gtype)
        ti = TensorInfo(name, gtype.name, mtype, ne, n_dims, nbytes, found.data_offset + rel)
        infos.append(ti)
        if mtype is not None:
            bs, ts = GGML_QUANT_SIZES[gtype]
            nb1 = ts * (ne[0] // bs)
            nb = (ts, nb1, nb1 * ne[1], nb1 * ne[1] * ne[2])
            try:
                tensors[name] = Tensor(mtype, ne, nb, reader.data, ti.offset, name=name)
            except ValueError as exc:  # the scan checked bounds and blocks; keep any other refusal a GGUFError
                raise BadHeader(f"{path}: tensor {name!r}: mlaref Tensor refused it: {exc}") from exc
    model = Model(path, found.version, found.alignment, found.data_offset, arch, meta, found.kv_types, infos,
                  tensors, None, reader=reader)
    if arch == ARCH:
        model.attn_layout = attn_layout(t.name for t in infos)
        if lenient:
            _collect_problems(model, meta, found.kv_types, check)
            return model
        model.hparams = read_hparams(meta, found.kv_types, path)
        model.hp, model.hp_error = _to_hparams(model.hparams)
        if check:
            check_tensors(model)
    return model


def _collect_problems(model: Model, meta, kv_types: dict, check: bool) -> None:
    """The lenient path of :func:`open_gguf`: every absent key, or else the first bad key value, then (when the
    hyper-parameters could be read) every tensor problem, into ``model.problems``."""
    model.problems = missing_keys(kv_types)
    if model.problems:
        return  # without the required keys there are no hyper-parameters, so no expected tensors
    try:
        model.hparams = read_hparams(meta, kv_types, model.path)
    except GGUFError as exc:
        model.problems.append((type(exc).__name__, str(exc).removeprefix(f"{model.path}: ")))
        return
    model.hp, model.hp_error = _to_hparams(model.hparams)
    if check:
        model.problems += tensor_problems(model)


def _to_hparams(hp: dict):
    """mlaref.reference.hparams.HParams built from the dict, or (None, reason) when it refuses the values."""
    try:
        return HParams(
            name=hp["name"] or "gguf", n_layer=hp["n_layer"], n_embd=hp["n_embd"], n_head=hp["n_head"],
            n_head_kv=hp["n_head_kv"], n_embd_head_k=hp["n_embd_head_k"], n_embd_head_v=hp["n_embd_head_v"],
            n_rot=hp["n_rot"], n_lora_q=hp["n_lora_q"], n_lora_kv=hp["n_lora_kv"], n_ff=hp["n_ff"],
            n_ff_exp=hp["n_ff_exp"], n_expert=hp["n_expert"], n_expert_used=hp["n_expert_used"],
            n_expert_shared=hp["n_expert_shared"], n_layer_dense_lead=hp["n_layer_dense_lead"],
            n_vocab=hp["n_vocab"], n_ctx_train=hp["n_ctx_train"], f_norm_rms_eps=hp["f_norm_rms_eps"],
            rope_freq_base=hp["rope_freq_base_train"], rope_freq_scale=hp["rope_freq_scale_train"],
            n_ctx_orig_yarn=hp["n_ctx_orig_yarn"], rope_yarn_log_mul=hp["rope_yarn_log_mul"],
            rope_attn_factor=hp["rope_attn_factor"], expert_weights_scale=hp["expert_weights_scale"],
            expert_weights_norm=hp["expert_weights_norm"], expert_gating_func=hp["expert_gating_func"],
        ), None
    except (ValueError, TypeError) as exc:
        return None, str(exc)

