"""Helpers shared by the test files: the project root, running a script, writing shards."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BIN_MAGIC, BIN_VERSION, BIN_HEADER_INTS = 20240520, 1, 256


def run_script(script, *args, cwd=None, env=None, timeout=300):
    """Run one of the project's scripts with this Python; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    command = [sys.executable, str(ROOT / script), *map(str, args)]
    return subprocess.run(command, cwd=cwd or ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def write_npy_shard(path, tokens):
    np.save(path, np.asarray(tokens, dtype=np.uint16))


def write_bin_shard(path, tokens):
    tokens = np.asarray(tokens, dtype=np.uint16)
    header = np.zeros(BIN_HEADER_INTS, dtype=np.int32)
    header[:3] = BIN_MAGIC, BIN_VERSION, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())


def write_shards(data_dir, vocab_size=512, tokens_per_shard=40_000, train_shards=2,
                 fmt="npy", seed=0):
    """Token shards with learnable structure: a noisy repeating pattern, so loss can fall."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pattern = rng.integers(0, vocab_size, size=97)
    writer = write_npy_shard if fmt == "npy" else write_bin_shard
    for index in range(train_shards + 1):
        split = "val" if index == 0 else "train"
        tokens = np.resize(pattern, tokens_per_shard)
        noise = rng.random(tokens_per_shard) < 0.1
        tokens[noise] = rng.integers(0, vocab_size, size=int(noise.sum()))
        writer(data_dir / f"synthetic_{split}_{index:06d}.{fmt}", tokens)
    return data_dir


@pytest.fixture
def shards(tmp_path):
    """A data dir of small npy shards with token ids below 512."""
    return write_shards(tmp_path / "data")
