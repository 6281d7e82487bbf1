"""Tensor files whose bytes are checked: safetensors with a SHA-256 of the tensor data.

Safetensors checks only its header, so flipped bits in tensor data load silently. Every
tensor file Zoology writes (segment cache, checkpoint, ``model.safetensors``, export)
records ``sha256`` of its data section in its metadata and is verified on read. The file
is written by this module with sorted keys throughout, so the same tensors and metadata
always give the same bytes (two identical runs give identical ``model.safetensors``), and
each tensor is stored on its own: tensors that share storage (tied or flattened weights)
are saved as the values they hold. Any safetensors reader can read the files.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch
from safetensors.torch import load as _parse

from zoology.files import atomic_write

DIGEST = "sha256"
_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


class CorruptFile(ValueError):
    """A tensor file that cannot be read or whose data does not match its digest."""


def dumps(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors bytes of ``tensors`` (on CPU, each its own contiguous copy), with
    ``metadata`` and the data's digest in the header."""
    blobs, entries, offset = [], {}, 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {t.dtype} cannot be saved")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        entries[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    body = b"".join(blobs)
    meta = {**(metadata or {}), DIGEST: hashlib.sha256(body).hexdigest()}
    header = json.dumps({"__metadata__": dict(sorted(meta.items())), **entries}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(header)) + header + body


def save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write atomically (see :mod:`zoology.files`)."""
    atomic_write(Path(path), dumps(tensors, metadata))


def shapes(path: Path) -> dict[str, list[int]]:
    """The name and shape of every tensor in a file, from its header alone (the data is
    neither read nor verified; :func:`load` does that); CorruptFile if the header is unreadable."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        return {k: list(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (OSError, ValueError, struct.error, TypeError, KeyError, AttributeError) as exc:
        raise CorruptFile(f"{path}: unreadable tensor file ({exc})") from None


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a file, verified against its digest; CorruptFile naming
    the file if it cannot be read, has no digest or does not match it."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])
        meta = json.loads(raw[8:8 + size]).get("__metadata__") or {}
    except (OSError, ValueError, struct.error) as exc:
        raise CorruptFile(f"{path}: unreadable tensor file ({exc})") from None
    want = meta.get(DIGEST)
    if want is None:
        raise CorruptFile(f"{path}: has no {DIGEST} of its data (not written by this version of zoology)")
    if hashlib.sha256(raw[8 + size:]).hexdigest() != want:
        raise CorruptFile(f"{path}: its tensor data does not match the {DIGEST} it was written with (corrupted)")
    try:
        tensors = _parse(raw)
    except Exception as exc:  # safetensors' own header checks
        raise CorruptFile(f"{path}: unreadable tensor file ({exc})") from None
    return tensors, {k: v for k, v in meta.items() if k != DIGEST}


def save_module(path: Path, module: torch.nn.Module, metadata: dict[str, str] | None = None) -> None:
    """A module's state dict (tied parameters stored once per name)."""
    save(path, module.state_dict(), metadata)


def load_module(path: Path, module: torch.nn.Module) -> dict[str, str]:
    """Load a verified state dict into ``module`` (strictly); returns the metadata."""
    tensors, meta = load(path)
    module.load_state_dict(tensors, strict=True)
    return meta
