"""Reading and writing model tensor files without the safetensors package.

Debian ships no python3-safetensors, and the format is small enough to do by
hand: 8-byte little-endian header length N, then N bytes of JSON (padded with
spaces to a multiple of 8), then the raw little-endian tensor data back to
back, in header order. The writer is deterministic (same tensors, same bytes),
which the committed golden files rely on.

.pth checkpoints (official BlinkDL releases) are torch.save zips and are read
with torch.load, as the official demos do.
"""
import json
import struct
from collections import OrderedDict

import numpy as np
import torch

# safetensors dtype name -> (torch dtype, bytes per element, numpy dtype used for I/O)
_DTYPES = {
    "F32": (torch.float32, 4, "<f4"),
    "F16": (torch.float16, 2, "<f2"),
    "BF16": (torch.bfloat16, 2, "<u2"),  # raw 16 bits; reinterpreted below
}
_NAMES = {v[0]: k for k, v in _DTYPES.items()}


def _from_bytes(raw: bytes, dtype: str, shape) -> torch.Tensor:
    tdtype, _, npdtype = _DTYPES[dtype]
    arr = np.frombuffer(raw, dtype=npdtype).copy()
    if dtype == "BF16":
        # bf16 is the top half of an fp32: widen exactly by shifting left 16.
        t = torch.from_numpy((arr.astype(np.uint32) << 16).view(np.float32))
        t = t.to(torch.bfloat16)
    else:
        t = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("=")))
    return t.reshape(shape)


def _to_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        bits = t.float().numpy().view(np.uint32) >> 16  # exact: value is bf16
        return bits.astype("<u2").tobytes()
    npdtype = _DTYPES[_NAMES[t.dtype]][2]
    return t.numpy().astype(npdtype).tobytes()


def read_safetensors(path):
    """Returns (OrderedDict name -> tensor in the file's dtype, metadata dict)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"), object_pairs_hook=OrderedDict)
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    out = OrderedDict()
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {info['dtype']}")
        b, e = info["data_offsets"]
        out[name] = _from_bytes(blob[base + b:base + e], info["dtype"], info["shape"])
    return out, dict(meta)


def safetensors_bytes(tensors, metadata=None) -> bytes:
    """The bytes of a safetensors file holding `tensors` (ordered) and metadata."""
    header = OrderedDict()
    if metadata:
        header["__metadata__"] = OrderedDict((str(k), str(v)) for k, v in metadata.items())
    chunks, offset = [], 0
    for name, t in tensors.items():
        raw = _to_bytes(t)
        header[name] = OrderedDict([("dtype", _NAMES[t.dtype]), ("shape", list(t.shape)),
                                    ("data_offsets", [offset, offset + len(raw)])])
        chunks.append(raw)
        offset += len(raw)
    js = json.dumps(header, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js + b"".join(chunks)


def write_safetensors(path, tensors, metadata=None):
    with open(path, "wb") as f:
        f.write(safetensors_bytes(tensors, metadata))


def load_tensors(path):
    """Loads a checkpoint, safetensors or .pth (detected from the content).

    Returns (OrderedDict name -> tensor, metadata); .pth files have no metadata.
    """
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04":  # torch.save zip
        sd = torch.load(path, map_location="cpu")
        return OrderedDict((k, v) for k, v in sd.items()), {}
    return read_safetensors(path)


def bf16_round(t: torch.Tensor) -> torch.Tensor:
    """fp32 -> bf16 with round-to-nearest-even (what torch's .to(bfloat16) does)."""
    return t.float().to(torch.bfloat16)
