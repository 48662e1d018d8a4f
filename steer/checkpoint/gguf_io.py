"""GGUF in and out, one tensor at a time (memory bounded by the largest tensor).

Import (`GGUFSource`): a GGUF file as edit input. Names, layouts and values are exactly what
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=torch.float32).state_dict()` gives:
transformers' own GGUF->HF name map and per-architecture tensor processors are applied per tensor
(e.g. the llama q/k permutation reversal, Gemma's `norm - 1`). Tensors are float32 in the Hugging
Face layout: nn.Linear weights [out_features, in_features], embeddings [vocab, d_model], norms and
biases 1-D. A GGUF holds no `lm_head` when the embeddings are tied: `tie_word_embeddings` is then
True (also in the written config.json) and the HF model's `lm_head.weight` *is*
`model.embed_tokens.weight`; `tensors()` yields it only once, under the embedding's name.
One deliberate difference: for a llama GGUF with q/k/v/o or MLP biases (llama.cpp uses them) the
config gets attention_bias/mlp_bias, where transformers' loader builds a bias-free model and drops them.

Export (`export_gguf`): a Hugging Face safetensors checkpoint to a GGUF that llama.cpp, Ollama and
transformers load, streamed tensor by tensor from the safetensors files into `gguf.GGUFWriter`,
with the architecture hyperparameters and a gpt2-style (byte-level BPE) tokenizer as metadata.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType as QT

from steer.errors import SteerError
from steer.model.load import _one_line, weight_files

# GGUF `general.architecture` values GGUFSource reads: families steer edits whose transformers
# tensor processor works tensor by tensor. Tested: qwen2, llama (round trips and the real model).
IMPORT_ARCHS = ("gemma2", "gemma3", "llama", "phi3", "qwen2", "qwen3")
# HF class -> GGUF architecture that export_gguf writes.
EXPORT_ARCHS = {"Qwen2ForCausalLM": "qwen2", "LlamaForCausalLM": "llama"}
QTYPES = {
    "f32": (QT.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (QT.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (QT.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}


class _CheckedReader(gguf.GGUFReader):
    """GGUFReader that checks the data section fits in the file before mapping the tensors
    (the stock reader fails on a truncated file with an opaque reshape error), and parses the
    metadata about 3x faster by slicing a plain ndarray view of the memory map (np.memmap slices
    pay a Python-level __array_finalize__ each; the pages are still read lazily)."""

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._data = value.view(np.ndarray)

    def _build_tensors(self, start_offs: int, fields: list) -> None:
        end = start_offs
        for field in fields:
            dims, raw_type, offset = field.parts[3], field.parts[4], field.parts[5]
            block, size = gguf.GGML_QUANT_SIZES[QT(int(raw_type[0]))]
            end = max(end, start_offs + int(offset[0]) + int(np.prod(dims)) * size // block)
        if end > len(self.data):
            raise _Truncated(f"{len(self.data)} bytes, its tensor table needs {end}")
        super()._build_tensors(start_offs, fields)


class _Truncated(Exception):
    pass


class GGUFSource:
    """A GGUF file read tensor by tensor (memory-mapped; one de-quantized tensor in memory at a time).

    architecture: Hugging Face class name, e.g. "Qwen2ForCausalLM".
    tie_word_embeddings: True when the file has no output matrix (lm_head = embed_tokens).
    """

    def __init__(self, file: Path):
        from transformers import AutoConfig, AutoModelForCausalLM
        from transformers.modeling_gguf_pytorch_utils import (
            TENSOR_PROCESSORS,
            TensorProcessor,
            get_gguf_hf_weights_map,
            load_gguf_checkpoint,
        )

        self.file = Path(file)
        if not self.file.is_file():
            raise SteerError(f"no such GGUF file: {self.file}")
        try:
            self._reader = _CheckedReader(self.file)
        except _Truncated as exc:
            raise SteerError(f"truncated GGUF file {self.file}: {exc}") from None
        except Exception as exc:  # the reader raises ValueError/KeyError/IndexError on damaged headers
            raise SteerError(f"corrupt or truncated GGUF file {self.file}: {_one_line(exc)}") from None
        arch = (
            self._reader.fields["general.architecture"].contents()
            if "general.architecture" in self._reader.fields
            else "?"
        )
        if arch not in IMPORT_ARCHS:
            raise SteerError(
                f"unsupported GGUF architecture {arch!r} in {self.file}; supported: {', '.join(IMPORT_ARCHS)}"
            )
        names = {t.name for t in self._reader.tensors}
        try:
            # The same config dict transformers builds (it also feeds the tensor processor).
            config_dict = load_gguf_checkpoint(str(self.file), return_tensors=False)["config"]
            if arch == "llama":  # transformers' GGUF config has no bias flags: it would drop these tensors
                for flag, probe in (("attention_bias", "blk.0.attn_q.bias"), ("mlp_bias", "blk.0.ffn_up.bias")):
                    if probe in names:
                        config_dict[flag] = True
            self._config = AutoConfig.for_model(**config_dict)
            with torch.device("meta"):  # only the parameter names are needed: no memory, no init
                meta = AutoModelForCausalLM.from_config(self._config)
            self._processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=config_dict)
            self._names: dict[str, str] = get_gguf_hf_weights_map(meta, self._processor)
        except Exception as exc:
            raise SteerError(f"cannot map GGUF file {self.file} to a Hugging Face model: {_one_line(exc)}") from None
        self.architecture: str = type(meta).__name__
        self.tie_word_embeddings = bool(self._config.tie_word_embeddings)
        # rope_freqs (llama3 RoPE scaling) is derived from the config; transformers skips it too.
        # Anything else without an HF name would be silently lost from an edited model: refuse.
        unmapped = sorted(names - set(self._names) - {"rope_freqs.weight"})
        if unmapped:
            raise SteerError(f"GGUF file {self.file} has tensors with no Hugging Face name: {', '.join(unmapped[:3])}")
        self._tensors = [t for t in self._reader.tensors if t.name in self._names]

    def specs(self) -> list[tuple[str, tuple[int, ...]]]:
        """(hf_name, hf_shape) in file order, from the header alone (ggml lists dims fastest first)."""
        return [(self._names[t.name], tuple(int(d) for d in reversed(t.shape))) for t in self._tensors]

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(hf_name, float32 tensor in the HF layout), one at a time, in file order."""
        for t in self._tensors:
            weights = gguf.quants.dequantize(t.data, t.tensor_type)  # numpy, [rows, cols] = HF layout
            result = self._processor.process(
                weights=weights, name=t.name, tensor_key_mapping=self._names, parsed_parameters={"tensors": {}}
            )
            w = result.weights
            if w.dtype != np.float32 or not w.flags.writeable or not w.flags.c_contiguous:
                w = np.array(w, dtype=np.float32, order="C")  # F32/F16 data is a read-only view of the mmap
            yield self._names[t.name], torch.from_numpy(w)

    def write_side_files(self, folder: Path) -> None:
        """config.json, generation_config.json and the tokenizer files (chat template included), as
        transformers derives them from the GGUF metadata."""
        from transformers import AutoTokenizer, GenerationConfig

        folder = Path(folder)
        config = self._config.__class__.from_dict(self._config.to_dict())
        config.architectures = [self.architecture]
        config.dtype = torch.float32  # the editor writes float32 weights
        config.save_pretrained(folder)
        GenerationConfig.from_model_config(config).save_pretrained(folder)
        # Load from a folder holding only the GGUF: a tokenizer.json beside the file would win.
        with tempfile.TemporaryDirectory() as tmp:
            os.symlink(self.file.resolve(), Path(tmp) / "model.gguf")
            try:
                tok = AutoTokenizer.from_pretrained(tmp, gguf_file="model.gguf")
            except Exception as exc:
                raise SteerError(f"cannot build a tokenizer from GGUF file {self.file}: {_one_line(exc)}") from None
        tok.save_pretrained(folder)


# ----------------------------------------------------------------------------------------------
# Export


@dataclass
class _Entry:
    hf_name: str
    gguf_name: str
    shard: Path
    shape: tuple[int, ...]
    qtype: QT


class _Writer(gguf.GGUFWriter):
    """GGUFWriter that can write an empty string array (the stock one refuses): llama.cpp requires
    `tokenizer.ggml.merges` for a gpt2 vocabulary even when there are no merges."""

    def _pack_val(
        self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool, sub_type: gguf.GGUFValueType | None = None
    ) -> bytes:
        if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0 and sub_type is not None:
            return (self._pack("I", vtype) if add_vtype else b"") + self._pack("I", sub_type) + self._pack("Q", 0)
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def _tensor_type(gguf_name: str, shape: tuple[int, ...], qtype: QT) -> QT:
    """llama.cpp's choice: 1-D tensors and norms stay F32; Q8_0 needs rows in blocks of 32
    (else F16, as llama.cpp falls back)."""
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return QT.F32
    if qtype == QT.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[QT.Q8_0][0] != 0:
        return QT.F16
    return qtype


def _nbytes(shape: tuple[int, ...], qtype: QT) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape)) * size // block


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's rotary layout for llama q/k (HF halves -> interleaved pairs); transformers undoes it
    on load (LlamaTensorProcessor). Rows are [n_head * head_dim], for weights and biases alike."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _order(name: str) -> tuple[int, int]:
    """token_embd, blk.0 ... blk.N, output_norm, output (the order llama.cpp's converter writes)."""
    if name.startswith("blk."):
        return 1, int(name.split(".")[1])
    return (0 if name.startswith("token_embd") else 2 if name.startswith("output_norm") else 3), 0


def _plan(folder: Path, config, arch: str, qtype: QT) -> list[_Entry]:
    from safetensors import safe_open

    name_map = gguf.get_tensor_name_map(
        next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch), config.num_hidden_layers
    )
    entries = []
    for shard in weight_files(folder):
        with safe_open(shard, framework="pt") as f:
            for hf_name in f.keys():
                if hf_name.endswith("rotary_emb.inv_freq") or (
                    hf_name == "lm_head.weight" and config.tie_word_embeddings
                ):
                    continue  # recomputed / tied: llama.cpp writes no output.weight when tied
                gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise SteerError(f"cannot map tensor {hf_name} of {shard} to a GGUF {arch} tensor name")
                shape = tuple(f.get_slice(hf_name).get_shape())
                entries.append(_Entry(hf_name, gguf_name, shard, shape, _tensor_type(gguf_name, shape, qtype)))
    if not config.tie_word_embeddings and "output.weight" not in {e.gguf_name for e in entries}:
        raise SteerError(f"{folder} has no lm_head.weight but its config says the embeddings are not tied")
    return sorted(entries, key=lambda e: _order(e.gguf_name))


def _add_hparams(w: gguf.GGUFWriter, config, arch: str) -> None:
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise SteerError(f"GGUF export does not support rope scaling ({rope.get('rope_type')!r}); only default RoPE")
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    w.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    if arch == "llama":  # transformers reads head_dim from rope.dimension_count for llama
        w.add_vocab_size(config.vocab_size)
        w.add_rope_dimension_count(head_dim)
        if head_dim != config.hidden_size // n_head:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)


def _pre_tokenizer(tj: dict, arch: str) -> str:
    """llama.cpp's `tokenizer.ggml.pre` name for the tokenizer's split regex."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    def walk(node: Any) -> Iterator[dict]:
        if isinstance(node, dict):
            yield node
            for child in node.get("pretokenizers") or ():
                yield from walk(child)

    nodes = list(walk(tj.get("pre_tokenizer")))
    regexes = [n["pattern"]["Regex"] for n in nodes if n.get("type") == "Split" and "Regex" in (n.get("pattern") or {})]
    for name in ("qwen2", "llama-bpe", "tekken", "gpt-4o", *GGUF_PRE_TOKENIZER_SPLITS):
        if regexes and GGUF_PRE_TOKENIZER_SPLITS.get(name) == regexes[0]:
            return name
    if not regexes and any(n.get("type") == "ByteLevel" and n.get("use_regex", True) for n in nodes):
        return "gpt2"
    # No regex we know (e.g. a test tokenizer that splits nothing): the family's own.
    return {"qwen2": "qwen2", "llama": "llama-bpe"}[arch]


def _add_tokenizer(w: _Writer, folder: Path, config, arch: str) -> str:
    """gpt2-style BPE vocabulary, merges, special ids, add_bos/eos and chat template from the folder's
    tokenizer files (as llama.cpp's converter reads them); returns the pre-tokenizer name."""
    from tokenizers import Tokenizer

    file = folder / "tokenizer.json"
    try:
        tj = json.loads(file.read_text(encoding="utf-8"))
        probe = Tokenizer.from_file(str(file)).encode("a").ids  # what the tokenizer adds on its own
    except Exception as exc:
        raise SteerError(f"cannot read tokenizer {file}: {_one_line(exc)}") from None
    model = tj["model"]
    if model.get("type") != "BPE" or model.get("byte_fallback") or (tj.get("decoder") or {}).get("type") != "ByteLevel":
        raise SteerError(f"GGUF export supports byte-level BPE tokenizers only; {file} is {model.get('type')}")
    ids = dict(model["vocab"])
    added = {t["id"]: t for t in tj.get("added_tokens", [])}
    ids.update({t["content"]: i for i, t in added.items()})
    n_vocab = config.vocab_size
    if max(ids.values()) >= n_vocab:
        raise SteerError(f"{file} has token id {max(ids.values())}, beyond vocab_size {n_vocab} of config.json")
    by_id = {i: t for t, i in ids.items()}
    tokens, types = [], []
    for i in range(n_vocab):  # ids the tokenizer lacks are padding rows of the embedding, as llama.cpp writes them
        token = by_id.get(i)
        tokens.append(f"[PAD{i}]" if token is None else token)
        types.append(
            gguf.TokenType.UNUSED
            if token is None
            else gguf.TokenType.NORMAL
            if i not in added
            else gguf.TokenType.CONTROL
            if added[i].get("special")
            else gguf.TokenType.USER_DEFINED
        )
    # Merges as "a b" (tokenizers >= 0.20 stores pairs); a space inside a part becomes U+0120, as llama.cpp writes it.
    merges = [
        m if isinstance(m, str) else " ".join(p.replace(" ", chr(ord(" ") + 256)) for p in m)
        for m in model.get("merges", [])
    ]
    pre = _pre_tokenizer(tj, arch)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_key_value(gguf.Keys.Tokenizer.MERGES, merges, gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.STRING)
    # bos/eos/pad/unk ids (tokenizer_config.json, else config.json), add_*_token and the chat template.
    special = gguf.SpecialVocab(
        folder, load_merges=False, n_vocab=n_vocab, special_token_types=("bos", "eos", "unk", "pad")
    )
    bos, eos = special.special_token_ids.get("bos"), special.special_token_ids.get("eos")
    special.add_special_token.setdefault("bos", bos is not None and probe[:1] == [bos])
    special.add_special_token.setdefault("eos", eos is not None and len(probe) > 1 and probe[-1:] == [eos])
    special.add_to_gguf(w, quiet=True)
    return pre


def export_gguf(folder: Path, out_file: Path, qtype: str = "f16", force: bool = False) -> dict:
    """Write the safetensors checkpoint `folder` as the GGUF `out_file`; return stats.

    qtype: "f32", "f16" or "q8_0" for 2-D weights (1-D tensors and norms stay F32). Tensors are read,
    converted and written one at a time. The file appears only when complete (written beside it and
    renamed); an existing `out_file` is replaced only with force=True.
    """
    folder, out_file = Path(folder), Path(out_file)
    config, arch = _export_config(folder, out_file, qtype, force)
    ggml_type, file_type = QTYPES[qtype]
    start = time.perf_counter()
    entries = _plan(folder, config, arch, ggml_type)
    out_file.resolve().parent.mkdir(parents=True, exist_ok=True)
    # Hidden, unique, beside the target (same file system, so the final rename is atomic).
    tmp, w = out_file.resolve().parent / f".{out_file.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}", None
    try:
        w = _Writer(tmp, arch)
        pre = _write_header(w, folder, config, arch, file_type, entries)
        _write_tensors(w, config, arch, entries)
        w.close()
        os.replace(tmp, out_file)
    except BaseException:
        if w is not None:
            w.close()
        tmp.unlink(missing_ok=True)
        raise
    return {
        "file": str(out_file),
        "architecture": arch,
        "qtype": qtype,
        "tensors": len(entries),
        "bytes": out_file.stat().st_size,
        "tokenizer_pre": pre,
        "tied_embeddings": bool(config.tie_word_embeddings),
        "seconds": round(time.perf_counter() - start, 2),
    }


def _export_config(folder: Path, out_file: Path, qtype: str, force: bool):
    """The checkpoint's config and GGUF architecture name, after checking every input (one-line errors)."""
    from transformers import AutoConfig

    if qtype not in QTYPES:
        raise SteerError(f"unknown GGUF type {qtype!r}; choose one of: {', '.join(QTYPES)}")
    if out_file.exists() and not force:
        raise SteerError(f"output file {out_file} already exists (use --force to replace it)")
    if out_file.is_dir():
        raise SteerError(f"output {out_file} is a folder; give a .gguf file name")
    if not (folder / "config.json").is_file():
        raise SteerError(f"not a Hugging Face checkpoint: {folder / 'config.json'} is missing")
    try:
        config = AutoConfig.from_pretrained(folder)
    except Exception as exc:
        raise SteerError(f"cannot read {folder / 'config.json'}: {_one_line(exc)}") from None
    hf_arch = (config.architectures or ["?"])[0]
    if hf_arch not in EXPORT_ARCHS:
        raise SteerError(f"GGUF export does not support {hf_arch!r}; supported: {', '.join(EXPORT_ARCHS)}")
    return config, EXPORT_ARCHS[hf_arch]


def _write_header(w: _Writer, folder: Path, config, arch: str, file_type, entries: list[_Entry]) -> str:
    """Metadata, tokenizer and every tensor's info (name, shape, type, offset); returns the pre-tokenizer name."""
    w.add_type("model")
    w.add_name(folder.resolve().name)
    _add_hparams(w, config, arch)
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    pre = _add_tokenizer(w, folder, config, arch)
    for e in entries:  # tensor infos first: the header holds every name, shape, type and offset
        w.add_tensor_info(e.gguf_name, e.shape, np.float32, _nbytes(e.shape, e.qtype), raw_dtype=e.qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    return pre


def _write_tensors(w: _Writer, config, arch: str, entries: list[_Entry]) -> None:
    """Each tensor read from its shard, converted (llama q/k un-permuted) and written, one at a time."""
    from safetensors import safe_open

    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    with ExitStack() as stack:
        handles = {s: stack.enter_context(safe_open(s, framework="pt")) for s in {e.shard for e in entries}}
        for e in entries:
            data = handles[e.shard].get_tensor(e.hf_name).to(torch.float32).numpy()
            if arch == "llama" and ".attn_q." in e.gguf_name:
                data = _permute_qk(data, n_head)
            elif arch == "llama" and ".attn_k." in e.gguf_name:
                data = _permute_qk(data, n_kv)
            w.write_tensor_data(gguf.quants.quantize(np.ascontiguousarray(data), e.qtype))
            del data
