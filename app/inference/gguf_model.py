"""A GGUF served as its own blocks: the transformers model built from the file's config, its Linears int4.

`build` reads the GGUF through the `gguf` package's memory-mapped reader, builds the architecture transformers
knows for it (weights on the meta device, so nothing is allocated twice), and fills it tensor by tensor:

- on a CPU with the block kernel, a Linear of a code-block type (Q4_0, Q4_1, Q4_K, Q5_x, Q8_0, and Q6_K with its
  scale per 16 weights) becomes a `BlockLinear` over the file's own codes (app/inference/gguf_blocks.py,
  app/inference/block_linear.py);
- elsewhere, a Linear whose GGUF type has an int4 form (Q4_0, Q4_1, Q4_K, and Q8_0/Q5_x as two planes) becomes an
  `Int4Linear` over the file's own codes (app/inference/int4_linear.py);
- any other Linear (Q2_K/Q3_K, F16/F32, and Q6_K off the block kernel) is dequantized by the `gguf` package into a
  dense weight (`DenseLinear`);
- a tied embedding table is the output head's int4 weight, read a row at a time (`Int4Embedding`; on CUDA, whose
  packed layout is opaque, a dense bf16 copy);
- norms and other small tensors go through transformers' own GGUF tensor processors (Gemma's norm offset).

The file's row permutation of llama's q/k (llama.cpp's rotary layout) is undone on the raw blocks before they are
unpacked, with transformers' processor applied to row indices. q/k/v and gate/up are then fused into one int4
weight each (`FusedLinears`), so a decode step calls the kernel 4 times a layer instead of 7.

`save`/`load` keep the packed result on the data volume: the state dict as safetensors plus a layout file that
says which module is what, so a restart rebuilds the skeleton and maps the tensors in, without unpacking again.
`Placement` is what the startup log lists: which tensors went where.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.inference import kernels
from app.inference.block_linear import FORMAT_NAMES, BlockLinear, fuse_blocks
from app.inference.gguf_blocks import BLOCK_TYPES, GROUP, code_blocks, dense_rows, int4_groups, is_int4
from app.inference.int4_linear import (
    PACK_ROWS,
    QUANTIZED,
    DenseLinear,
    FusedLinears,
    FusedPart,
    Int4Embedding,
    Int4Linear,
    QuantizedLinear,
    can_pack,
    fuse,
)

log = logging.getLogger("clawbot.model")

LAYOUT_FILE = "layout.json"
# Bumped when the packed layout or the layout file changes shape, so old caches are rebuilt rather than misread.
CACHE_FORMAT = 4
WEIGHTS_FILE = "model.safetensors"
FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


class GgufError(ValueError):
    """The GGUF cannot be served as it is; the message names the file and what is missing."""


@dataclass
class Placement:
    """Where each GGUF tensor went: counts per (GGUF type, form) and the file's own quantization (its Linears' type)."""

    forms: Counter[tuple[str, str]] = field(default_factory=Counter)
    linear_types: Counter[str] = field(default_factory=Counter)
    file_type: str | None = None  # general.file_type as llama.cpp names it (MOSTLY_Q4_K_M -> q4_k_m)

    def add(self, gguf_type: str, form: str, linear: bool) -> None:
        self.forms[(gguf_type, form)] += 1
        if linear:
            self.linear_types[gguf_type] += 1

    @property
    def quantization(self) -> str:
        """The file's quantization as llama.cpp names it (q4_1, q4_k_m), else the type most of its Linears have."""
        if self.file_type:
            return self.file_type
        return self.linear_types.most_common(1)[0][0].lower() if self.linear_types else "f32"

    def summary(self) -> dict[str, int]:
        return {f"{t} -> {form}": n for (t, form), n in sorted(self.forms.items())}


def _module(root: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = dotted.rpartition(".")
    return (root.get_submodule(parent_name) if parent_name else root), attr


def _row_order(processor: Any, name: str, rows: int) -> np.ndarray | None:
    """The processor's row permutation for this tensor (llama's q/k), found by processing row indices; None if none."""
    index = np.arange(rows, dtype=np.float64)[:, None]
    out = np.asarray(processor.process(weights=index, name=name).weights)
    if out.shape != index.shape:
        raise GgufError(f"transformers' GGUF processor reshapes {name}; it cannot be served as int4 blocks")
    order = out[:, 0].astype(np.int64)
    return None if np.array_equal(order, np.arange(rows)) else order


def uses_blocks(device: torch.device) -> bool:
    """Whether quantized weights take ClawBot's block kernel here (a CPU with AVX2), rather than torch's int4."""
    return device.type == "cpu" and kernels.available()


def _quantized(qtype: Any, device: torch.device) -> bool:
    """Whether a tensor of this block type keeps its codes here: any code-block type on the block kernel (Q6_K
    included), an int4 type on torch's kernels."""
    return qtype in BLOCK_TYPES if uses_blocks(device) else is_int4(qtype)


def _fits(out_features: int, in_features: int, device: torch.device) -> bool:
    return in_features % GROUP == 0 if uses_blocks(device) else can_pack(out_features, in_features)


def _int4(raw: np.ndarray, qtype: Any, device: torch.device, kernel_dtype: torch.dtype) -> QuantizedLinear:
    starts = range(0, raw.shape[0], PACK_ROWS)
    if uses_blocks(device):
        return BlockLinear.from_code_blocks(code_blocks(qtype, raw[s : s + PACK_ROWS]) for s in starts)
    return Int4Linear.from_groups((int4_groups(qtype, raw[s : s + PACK_ROWS]) for s in starts), device, kernel_dtype)


def _dense(raw: np.ndarray, qtype: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(dense_rows(qtype, raw)).to(device=device, dtype=dtype)


def _embed_scale(module: nn.Module) -> float | None:
    return getattr(module, "scalar_embed_scale", None)


def _fuse_layers(model: nn.Module) -> int:
    """q/k/v and gate/up that are quantized alike become one FusedLinears each; returns how many."""
    count = 0
    for module in list(model.modules()):
        for fused_name, names in FUSED.items():
            found = [getattr(module, n, None) for n in names]
            blocks = [p for p in found if isinstance(p, BlockLinear)]
            int4 = [p for p in found if isinstance(p, Int4Linear)]
            try:
                if len(blocks) == len(found):
                    joined: QuantizedLinear = fuse_blocks(blocks)
                elif len(int4) == len(found):
                    joined = fuse(int4)
                else:
                    continue
            except ValueError:
                continue
            owner = FusedLinears(joined, [p.out_features for p in blocks or int4])
            setattr(module, fused_name, owner)
            for index, n in enumerate(names):
                setattr(module, n, FusedPart(owner, index))
            count += 1
    return count


def _gguf_names(model: nn.Module, architecture: str, config: Any) -> dict[str, str]:
    """GGUF tensor name -> the model's parameter name, by gguf's own name table (what transformers' loader does,
    with the table built once rather than once per submodule)."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    arch = next((key for key, value in MODEL_ARCH_NAMES.items() if value == architecture), None)
    if arch is None:
        raise GgufError(f"the gguf package does not know the architecture {architecture!r}")
    table = get_tensor_name_map(arch, config.num_hidden_layers)
    names = {}
    for hf_name in model.state_dict():
        stem, _, suffix = hf_name.rpartition(".")
        gguf_name = table.get_name(stem)
        if gguf_name is not None:
            names[f"{gguf_name}.{suffix}"] = hf_name
    return names


def _skeleton(config: Any, dtype: torch.dtype) -> nn.Module:
    """The architecture with its parameters on the meta device and its buffers (rotary tables) real."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def _check_materialized(model: nn.Module, source: str) -> None:
    missing = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if missing:
        raise GgufError(f"{source} has no tensor for {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")


def build(
    gguf: Path, config: Any, device: torch.device, dtype: torch.dtype, kernel_dtype: torch.dtype = torch.bfloat16
) -> tuple[nn.Module, Placement]:
    """The model for `gguf` (config from transformers' GGUF reader), every Linear of a code-block type as a
    BlockLinear (ClawBot's kernel, fp32) where `uses_blocks`, else every Linear with an int4 form as an Int4Linear
    computing in `kernel_dtype`; a Linear with no such form (Q6_K off the block kernel) is a DenseLinear in
    `kernel_dtype`."""
    from gguf import GGUFReader
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    reader = GGUFReader(str(gguf))  # np.memmap: tensors are read from the page cache, chunk by chunk
    architecture = str(reader.fields["general.architecture"].contents())
    processor = TENSOR_PROCESSORS.get(architecture, TensorProcessor)(config=config.to_dict())
    model = _skeleton(config, dtype)
    names = _gguf_names(model, architecture, config)
    placement = Placement(file_type=_file_type(reader))
    tied = getattr(config, "tie_word_embeddings", False) and not any(t.name == "output.weight" for t in reader.tensors)
    for tensor in reader.tensors:
        hf_name = names.get(tensor.name)
        if hf_name is None:
            continue
        qtype, raw = tensor.tensor_type, tensor.data
        owner, attr = _module(model, hf_name)
        module_name = hf_name.rsplit(".", 1)[0]
        module = model.get_submodule(module_name) if "." in hf_name else None
        if isinstance(module, nn.Embedding):
            if tied:
                head = _head_from(raw, qtype, device, dtype, kernel_dtype, placement)
                model.set_output_embeddings(head)
                _set_embedding(model, module_name, module, head, dtype, device, raw, qtype, placement)
            else:
                module.weight = nn.Parameter(_dense(raw, qtype, dtype, device), requires_grad=False)
                placement.add(qtype.name, f"dense {str(dtype).removeprefix('torch.')}", False)
            continue
        if isinstance(module, nn.Linear) and attr == "weight":
            order = _row_order(processor, tensor.name, raw.shape[0])
            if order is not None:
                raw = raw[order]
            parent, child = _module(model, module_name)
            if _quantized(qtype, device) and _fits(module.out_features, module.in_features, device):
                layer = _int4(raw, qtype, device, kernel_dtype)
                if module.bias is not None and not module.bias.is_meta:
                    layer.bias = nn.Parameter(module.bias.detach(), requires_grad=False)
                setattr(parent, child, layer)
                placement.add(qtype.name, _form(layer), True)
            else:
                setattr(parent, child, DenseLinear(_dense(raw, qtype, torch.float32, device), kernel_dtype))
                placement.add(qtype.name, f"dense {str(kernel_dtype).removeprefix('torch.')}", True)
            continue
        shape = [int(d) for d in reversed(tensor.shape)]  # GGUF lists dimensions innermost first
        values = dense_rows(qtype, raw.reshape(-1, raw.shape[-1]) if raw.ndim > 1 else raw[None]).reshape(shape)
        values = processor.process(weights=values, name=tensor.name).weights
        param = torch.from_numpy(np.array(values, dtype=np.float32)).to(device=device, dtype=dtype)
        setattr(owner, attr, nn.Parameter(param, requires_grad=False))
        placement.add(qtype.name, f"dense {str(dtype).removeprefix('torch.')}", False)
    _fuse_layers(model)
    _check_materialized(model, str(gguf))
    return model.to(device), placement  # the skeleton's buffers (rotary tables) were made on the CPU


def _file_type(reader: Any) -> str | None:
    from gguf import LlamaFileType

    field_ = reader.fields.get("general.file_type")
    try:
        return LlamaFileType(int(field_.contents())).name.removeprefix("MOSTLY_").lower() if field_ else None
    except ValueError:
        return None


def _form(layer: QuantizedLinear) -> str:
    if isinstance(layer, BlockLinear):
        return f"blocks ({FORMAT_NAMES[layer.format]})"
    return "int4" if layer.planes == 1 else "int4 x2 planes"


def _head_from(
    raw: np.ndarray,
    qtype: Any,
    device: torch.device,
    dtype: torch.dtype,
    kernel_dtype: torch.dtype,
    placement: Placement,
) -> nn.Module:
    rows = raw.shape[0]
    if _quantized(qtype, device):
        head = _int4(raw, qtype, device, kernel_dtype)
        if _fits(head.out_features, head.in_features, device):
            placement.add(qtype.name, _form(head) + " (output head, tied embedding)", True)
            return head
    weight = _dense(raw, qtype, dtype, device)
    linear = nn.Linear(weight.shape[1], rows, bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    placement.add(qtype.name, f"dense {str(dtype).removeprefix('torch.')} (output head, tied embedding)", True)
    return linear


def _set_embedding(
    model: nn.Module,
    name: str,
    module: nn.Embedding,
    head: nn.Module,
    dtype: torch.dtype,
    device: torch.device,
    raw: np.ndarray,
    qtype: Any,
    placement: Placement,
) -> None:
    parent, child = _module(model, name)
    if isinstance(head, QUANTIZED) and device.type == "cpu":
        setattr(parent, child, Int4Embedding(head, dtype, _embed_scale(module)))
        return
    # CUDA's packed layout cannot be read a row at a time, and a dense head already is the table.
    weight = head.weight if isinstance(head, nn.Linear) else _dense(raw, qtype, dtype, device)
    module.weight = nn.Parameter(weight, requires_grad=False)
    if not isinstance(head, nn.Linear):
        placement.add(
            qtype.name, f"dense {str(dtype).removeprefix('torch.')} (embedding table on {device.type})", False
        )


# -- the cache: layout + safetensors ---------------------------------------------------------------------
def layout_of(model: nn.Module) -> dict[str, Any]:
    """What `load` needs to rebuild the module tree around the saved tensors."""
    modules: dict[str, Any] = {}
    fused_inner = {id(m.fused) for m in model.modules() if isinstance(m, FusedLinears)}
    owners = {id(m): n for n, m in model.named_modules() if isinstance(m, FusedLinears)}
    for name, module in model.named_modules():
        if isinstance(module, Int4Linear) and id(module) not in fused_inner:
            modules[name] = {
                "kind": "int4",
                "in": module.in_features,
                "out": module.out_features,
                "planes": module.planes,
                "bias": module.bias is not None,
            }
        elif isinstance(module, BlockLinear) and id(module) not in fused_inner:
            modules[name] = {
                "kind": "blocks",
                "in": module.in_features,
                "out": module.out_features,
                "format": module.format,
                "bias": module.bias is not None,
            }
        elif isinstance(module, FusedLinears):
            inner = module.fused
            form = {"format": inner.format} if isinstance(inner, BlockLinear) else {"planes": inner.planes}
            modules[name] = {"kind": "fused", "sizes": module.sizes, "in": inner.in_features, **form}
        elif isinstance(module, FusedPart):
            modules[name] = {"kind": "part", "index": module.index, "owner": owners[id(module.owner)]}
        elif isinstance(module, DenseLinear):
            modules[name] = {"kind": "dense", "in": module.in_features, "out": module.out_features}
        elif isinstance(module, Int4Embedding):
            modules[name] = {"kind": "int4_embedding", "scale": module.scale}
        elif isinstance(module, nn.Linear) and module is model.get_output_embeddings():
            modules[name] = {"kind": "linear", "in": module.in_features, "out": module.out_features}
    head = model.get_output_embeddings()
    return {"modules": modules, "tied_head": next(n for n, m in model.named_modules() if m is head)}


def save(model: nn.Module, placement: Placement, directory: Path) -> None:
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}  # a dense head tied to its embedding: one tensor under two names
    seen: dict[tuple[int, torch.Size], str] = {}
    for key, value in model.state_dict().items():
        first = seen.setdefault((value.data_ptr(), value.shape), key)
        if first != key:
            aliases[key] = first
        else:
            tensors[key] = value.contiguous()
    save_file(tensors, str(directory / WEIGHTS_FILE))
    layout = layout_of(model)
    layout["aliases"] = aliases
    layout["placement"] = [[t, form, n] for (t, form), n in placement.forms.items()]
    layout["linear_types"] = dict(placement.linear_types)
    layout["file_type"] = placement.file_type
    (directory / LAYOUT_FILE).write_text(json.dumps(layout, indent=1))


def load(
    directory: Path, config: Any, device: torch.device, dtype: torch.dtype, kernel_dtype: torch.dtype = torch.bfloat16
) -> tuple[nn.Module, Placement]:
    """The model `save` wrote: skeleton, the saved module kinds in place, tensors mapped from the safetensors file."""
    from safetensors.torch import load_file

    layout = json.loads((directory / LAYOUT_FILE).read_text())
    model = _skeleton(config, dtype)
    meta = torch.device("meta")
    head_name = layout["tied_head"]
    modules: dict[str, Any] = layout["modules"]
    for name, spec in modules.items():
        if spec["kind"] == "int4":
            parent, child = _module(model, name)
            bias = torch.empty(spec["out"], device=meta) if spec["bias"] else None
            setattr(
                parent,
                child,
                Int4Linear(spec["in"], spec["out"], spec["planes"], device, kernel_dtype, bias, empty=True),
            )
        elif spec["kind"] == "blocks":
            parent, child = _module(model, name)
            bias = torch.empty(spec["out"], device=meta) if spec["bias"] else None
            setattr(parent, child, BlockLinear(spec["in"], spec["out"], spec["format"], bias, empty=True))
        elif spec["kind"] == "dense":
            parent, child = _module(model, name)
            setattr(parent, child, DenseLinear(torch.empty(spec["out"], spec["in"], device=meta), kernel_dtype))
        elif spec["kind"] == "linear":
            parent, child = _module(model, name)
            setattr(parent, child, nn.Linear(spec["in"], spec["out"], bias=False, device=meta, dtype=dtype))
    for name, spec in modules.items():
        if spec["kind"] == "fused":
            parent, child = _module(model, name)
            fused: QuantizedLinear
            if "format" in spec:
                fused = BlockLinear(spec["in"], sum(spec["sizes"]), spec["format"], empty=True)
            else:
                fused = Int4Linear(spec["in"], sum(spec["sizes"]), spec["planes"], device, kernel_dtype, empty=True)
            setattr(parent, child, FusedLinears(fused, spec["sizes"]))
    for name, spec in modules.items():
        if spec["kind"] == "part":
            parent, child = _module(model, name)
            setattr(parent, child, FusedPart(model.get_submodule(spec["owner"]), spec["index"]))
        elif spec["kind"] == "int4_embedding":
            parent, child = _module(model, name)
            setattr(parent, child, Int4Embedding(model.get_submodule(head_name), dtype, spec["scale"]))
    tensors = load_file(str(directory / WEIGHTS_FILE), device=str(device))
    for alias, first in layout.get("aliases", {}).items():
        tensors[alias] = tensors[first]
    model.load_state_dict(tensors, strict=False, assign=True)
    for alias, first in layout.get("aliases", {}).items():
        owner, attr = _module(model, alias)
        source, source_attr = _module(model, first)
        setattr(owner, attr, getattr(source, source_attr))
    _check_materialized(model, str(directory / WEIGHTS_FILE))
    model.to(device)  # the skeleton's buffers (rotary tables) were made on the CPU
    placement = Placement(file_type=layout.get("file_type"))
    for gguf_type, form, n in layout["placement"]:
        placement.forms[(gguf_type, form)] = n
    placement.linear_types.update(layout["linear_types"])
    return model, placement
