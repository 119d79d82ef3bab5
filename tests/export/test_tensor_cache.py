"""tensor-cache.json schema, 32 MiB shards, and `inspect --verify` catching damaged shards."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from desv_export.cli import main
from desv_export.mlc.tensor_cache import TensorCache, verify_shards, write_tensor_cache

MIB = 1 << 20


def check_schema(weight_dir) -> dict:
    index = json.loads((weight_dir / "tensor-cache.json").read_text())
    assert set(index) == {"metadata", "records"}
    assert set(index["metadata"]) == {"ParamSize", "ParamBytes", "BitsPerParam"}
    assert isinstance(index["metadata"]["ParamBytes"], float)
    for i, shard in enumerate(index["records"]):
        assert set(shard) == {"dataPath", "format", "nbytes", "records", "md5sum"}
        assert shard["dataPath"] == f"params_shard_{i}.bin" and shard["format"] == "raw-shard"
        data = (weight_dir / shard["dataPath"]).read_bytes()
        assert shard["nbytes"] == len(data)
        assert shard["md5sum"] == hashlib.md5(data).hexdigest()
        offset = 0
        for rec in shard["records"]:
            assert set(rec) == {"name", "shape", "dtype", "format", "nbytes", "byteOffset"}
            assert rec["format"] == "f32-to-bf16"
            assert rec["byteOffset"] == offset  # back to back, C order
            assert rec["nbytes"] == int(np.prod(rec["shape"])) * np.dtype(rec["dtype"]).itemsize
            offset += rec["nbytes"]
        assert offset == shard["nbytes"]
    return index


def test_schema_of_an_export(exported):
    out = exported("tied", "q2f16_g128asym")
    index = check_schema(out)
    assert len(index["records"]) == 1  # the tiny model fits one shard
    assert index["metadata"]["ParamSize"] == sum(len(s["records"]) for s in index["records"])


def test_shards_are_capped_at_32_mib_and_big_tensors_go_alone(tmp_path):
    arrays = [(f"small.{i}", np.full((3 * MIB // 4,), i, np.uint32)) for i in range(12)]  # 3 MiB each
    arrays.insert(5, ("big", np.arange(17 * MIB // 2, dtype=np.float16)))  # 17 MiB: its own shard
    out = tmp_path / "cache"
    out.mkdir()
    write_tensor_cache(iter(arrays), out, lambda: 1000)
    index = check_schema(out)
    shards = index["records"]
    for s in shards:
        assert s["nbytes"] < 32 * MIB or len(s["records"]) == 1
    big = [s for s in shards if any(r["name"] == "big" for r in s["records"])]
    assert len(big) == 1 and len(big[0]["records"]) == 1
    assert len(shards) == 3  # 10 x 3 MiB, the 17 MiB one, 2 x 3 MiB
    cache = TensorCache(out)
    for name, arr in arrays:
        np.testing.assert_array_equal(cache[name], arr)
    assert index["metadata"]["ParamBytes"] == float(sum(a.nbytes for _, a in arrays))
    assert index["metadata"]["BitsPerParam"] == pytest.approx(sum(a.nbytes for _, a in arrays) * 8 / 1000)


@pytest.fixture
def damaged(exported, tmp_path):
    src = exported("untied", "q4f16_1")
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    return out


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_inspect_verify_ok(exported):
    r = run("inspect", exported("untied", "q4f16_1"), "--verify")
    assert r.exit_code == 0, r.output
    assert "q4f16_1" in r.output and "shard(s) OK" in r.output
    for kind in ("embedding", "attention", "mlp", "lm_head", "norm", "linear", "total"):
        assert kind in r.output


def test_inspect_verify_flipped_byte(damaged):
    shard = damaged / "params_shard_0.bin"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert run("inspect", damaged).exit_code == 0  # without --verify nothing is read
    r = run("inspect", damaged, "--verify")
    assert r.exit_code == 2
    assert "params_shard_0.bin" in r.output and "md5" in r.output
    assert any("params_shard_0.bin" in p for p in verify_shards(damaged))


def test_inspect_verify_wrong_size(damaged):
    shard = damaged / "params_shard_0.bin"
    shard.write_bytes(shard.read_bytes()[:-4])
    r = run("inspect", damaged, "--verify")
    assert r.exit_code == 2
    assert "params_shard_0.bin" in r.output and "size" in r.output


def test_inspect_missing_dir_is_a_user_error(tmp_path):
    r = run("inspect", tmp_path / "nope")
    assert r.exit_code == 2 and "tensor-cache.json" in r.output
