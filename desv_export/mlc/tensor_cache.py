"""The tensor cache (``tensor-cache.json`` + ``params_shard_*.bin``): write with TVM, read without.

Writing goes through TVM's own ``tvm.contrib.tvmjs.dump_tensor_cache`` (0.27), the function
MLC-LLM's ``convert_weight`` calls, so the layout is TVM's by construction:

* ``tensor-cache.json``: ``{"metadata": ..., "records": [shard, ...]}``; a shard is
  ``{"dataPath": "params_shard_<i>.bin", "format": "raw-shard", "nbytes", "records", "md5sum"}``
  and each of its records ``{"name", "shape", "dtype", "format", "nbytes", "byteOffset"}``.
* shards hold raw C-order little-endian tensors back to back, under 32 MiB; a tensor of 16 MiB
  or more goes alone into its own shard (TVM's "out of band" rule).

Streaming: ``dump_tensor_cache`` accepts an iterator of ``(name, array)`` and keeps only the
current shard's bytes (< 32 MiB) plus the tensor being added, and it takes the metadata as a
callable evaluated after the iterator is exhausted. We pass a generator that quantizes one
tensor at a time and a callable that reports the totals the generator counted, so a 7B model
streams through without ever being held whole, with no change to TVM's writer.

Reading (``TensorCache``, ``verify_shards``) is plain json + numpy so ``inspect`` and the engine
need no TVM compiler, only the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import UserError, read_user_json

INDEX_FILE = "tensor-cache.json"
SHARD_CAP_MB = 32
# MLC-LLM's convert_weight passes "f32-to-bf16"; it only changes float32 arrays (we write none),
# and it is what the records' "format" field says in every MLC weight directory.
ENCODE_FORMAT = "f32-to-bf16"


@dataclass
class WriteStats:
    """Totals counted while the generator streamed (MLC's metadata fields)."""

    count: int = 0
    nbytes: int = 0


def index_metadata(count: int, nbytes: int, source_params: int) -> dict:
    """tensor-cache.json's ``metadata``: MLC's ParamSize, ParamBytes and BitsPerParam."""
    return {
        "ParamSize": count,
        "ParamBytes": float(nbytes),
        "BitsPerParam": nbytes * 8.0 / source_params if source_params else 0.0,
    }


def write_tensor_cache(
    params: Iterable[tuple[str, np.ndarray]],
    out_dir: Path,
    source_params: Callable[[], int],
) -> dict:
    """Stream ``(name, array)`` into ``out_dir`` with TVM's writer; return the index it wrote.

    ``source_params`` is called after the stream ends and returns the number of weights of the
    source model (MLC's ``total_param_num``) for ``BitsPerParam = ParamBytes * 8 / params``.
    """
    from tvm.contrib import tvmjs

    stats = WriteStats()

    def counted() -> Iterator[tuple[str, np.ndarray]]:
        for name, arr in params:
            arr = np.ascontiguousarray(arr)
            stats.count += 1
            stats.nbytes += arr.nbytes
            yield name, arr

    def metadata() -> dict:
        return index_metadata(stats.count, stats.nbytes, source_params())

    # dump_tensor_cache prints its own progress lines; the exporter shows a tqdm bar instead.
    with contextlib.redirect_stdout(io.StringIO()):
        tvmjs.dump_tensor_cache(
            counted(),
            str(out_dir),
            encode_format=ENCODE_FORMAT,
            meta_data=metadata,
            shard_cap_mb=SHARD_CAP_MB,
            show_progress=False,
        )
    return read_index(out_dir)


def read_index(weight_dir: Path) -> dict:
    """The parsed ``tensor-cache.json`` of a weight directory (UserError if absent or bad)."""
    path = Path(weight_dir) / INDEX_FILE
    index = read_user_json(path, f"{weight_dir} is not an MLC weight directory (run desv-export export)")
    if not isinstance(index, dict) or not isinstance(index.get("records"), list):
        raise UserError(f"{path} has no 'records' list; re-export the directory")
    return index


@dataclass(frozen=True)
class Record:
    """One parameter of the cache: where its bytes are and what they are."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    byte_offset: int
    data_path: str


def _np_dtype(dtype: str) -> np.dtype:
    try:
        return np.dtype(dtype)
    except TypeError:
        raise UserError(f"{INDEX_FILE}: dtype {dtype!r} cannot be read with numpy") from None


class TensorCache:
    """Read-only, by-name access to a weight directory's tensors (numpy, no TVM)."""

    def __init__(self, weight_dir: Path) -> None:
        self.dir = Path(weight_dir)
        self.index = read_index(self.dir)
        self.metadata: dict = self.index.get("metadata", {})
        self.shards: list[dict] = self.index["records"]
        self.records: dict[str, Record] = {}
        for shard in self.shards:
            for rec in shard["records"]:
                self.records[rec["name"]] = Record(
                    rec["name"],
                    tuple(rec["shape"]),
                    rec["dtype"],
                    int(rec["nbytes"]),
                    int(rec["byteOffset"]),
                    shard["dataPath"],
                )

    def names(self) -> list[str]:
        return list(self.records)

    def __contains__(self, name: str) -> bool:
        return name in self.records

    def __getitem__(self, name: str) -> np.ndarray:
        rec = self.records[name]
        dtype = _np_dtype(rec.dtype)
        count = int(np.prod(rec.shape, dtype=np.int64))
        if count * dtype.itemsize != rec.nbytes:
            raise UserError(f"{INDEX_FILE}: {name} records {rec.nbytes} bytes for shape {list(rec.shape)} {rec.dtype}")
        path = self.dir / rec.data_path
        arr = np.fromfile(path, dtype=dtype.newbyteorder("<"), count=count, offset=rec.byte_offset)
        if arr.size != count:
            raise UserError(f"{path} is shorter than {INDEX_FILE} says; re-export or run inspect --verify")
        return arr.astype(dtype, copy=False).reshape(rec.shape)

    def group(self, prefix: str) -> dict[str, np.ndarray]:
        """All tensors named ``<prefix>.<suffix>``, keyed by suffix (q_weight, q_scale, ...)."""
        return {n[len(prefix) + 1 :]: self[n] for n in self.records if n.startswith(prefix + ".")}

    def total_bytes(self) -> int:
        return sum(r.nbytes for r in self.records.values())


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_shards(weight_dir: Path) -> list[str]:
    """Re-read every shard; return one line per problem (missing, size, md5, record bounds)."""
    weight_dir = Path(weight_dir)
    problems = []
    for shard in read_index(weight_dir)["records"]:
        path = weight_dir / shard["dataPath"]
        if shard.get("format") != "raw-shard":
            problems.append(f"{path.name}: format {shard.get('format')!r} is not 'raw-shard'")
        if not path.is_file():
            problems.append(f"{path.name}: missing")
            continue
        size = path.stat().st_size
        if size != shard["nbytes"]:
            problems.append(f"{path.name}: size {size} bytes, {INDEX_FILE} says {shard['nbytes']}")
        elif (md5 := md5_file(path)) != shard.get("md5sum"):
            problems.append(f"{path.name}: md5 {md5} does not match {shard.get('md5sum')}")
        for rec in shard["records"]:
            if rec["byteOffset"] + rec["nbytes"] > shard["nbytes"]:
                problems.append(f"{path.name}: record {rec['name']} runs past the end of the shard")
    return problems
