"""Benchmarks, one subcommand each.

    python bench.py fineweb    # tokenizing: fineweb.py, build-nanogpt's method, tiktoken
    python bench.py train      # training: tokens/s and MFU of train_gpt2.py's optimizer step

Each measurement runs in a fresh process, so one method's memory and warm caches do not leak into
the next, and the methods take turns within every round, so a busy shared machine slows them
alike. Ratios are taken within a round, then summarized over rounds.
"""
import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import statistics
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

import fineweb

HERE = Path(__file__).resolve().parent


# ----------------------------------------------------------------------------------------------
# fineweb: documents -> GPT-2 token shards
# Three ways to tokenize the same jsonl corpus:
#   fineweb    this project's fineweb.py, end to end (read, tokenize, write shards)
#   nanogpt    build-nanogpt's method, rewritten here: a Pool of cpu_count()//2 processes,
#              encode_ordinary per document, imap chunks of 16, a uint16 shard buffer
#   tiktoken   tiktoken's own encode_ordinary_batch on every core, text already in memory:
#              no reading, no writing, so the ceiling for the tokenizing itself

METHODS = ("nanogpt", "fineweb", "tiktoken")


def python_sources() -> list:
    """The standard library's .py files (not site-packages, which some installs nest inside)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = [path for path in stdlib.rglob("*.py") if "site-packages" not in path.parts]
    return sorted(paths, key=lambda path: path.relative_to(stdlib).parts)


def build_corpus(path: Path, min_megabytes: float) -> Path:
    """A jsonl corpus of the stdlib's sources, repeated until it holds `min_megabytes` of text."""
    if path.exists() and path.stat().st_size >= min_megabytes * 1e6:
        return path
    texts = [source.read_bytes().decode("utf-8", errors="replace") for source in python_sources()]
    one_copy = sum(len(text.encode()) for text in texts)
    copies = max(1, -(-int(min_megabytes * 1e6) // one_copy))
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        for _ in range(copies):
            for text in texts:
                file.write(json.dumps({"text": text}) + "\n")
    os.replace(temporary, path)
    return path


def corpus_documents(corpus: Path):
    with open(corpus, "rb") as file:
        for line in file:
            yield json.loads(line)["text"]


def nanogpt_tokenize(text: str) -> np.ndarray:
    tokens = [fineweb.EOT_TOKEN]
    tokens.extend(fineweb.tokenizer().encode_ordinary(text))
    tokens = np.array(tokens)
    assert (0 <= tokens).all() and (tokens < 2**16).all(), "token does not fit uint16"
    return tokens.astype(np.uint16)


def nanogpt_method(corpus: Path, out: Path, shard_size: int) -> int:
    """build-nanogpt's data preparation, done the same way on a local corpus."""
    processes = max(1, os.cpu_count() // 2)
    shard, filled, index, total = np.empty(shard_size, dtype=np.uint16), 0, 0, 0
    with multiprocessing.Pool(processes) as pool:
        for tokens in pool.imap(nanogpt_tokenize, corpus_documents(corpus), chunksize=16):
            total += len(tokens)
            while len(tokens):
                take = min(shard_size - filled, len(tokens))
                shard[filled:filled + take] = tokens[:take]
                filled, tokens = filled + take, tokens[take:]
                if filled == shard_size:
                    np.save(out / fineweb.shard_name("edufineweb", index, "npy"), shard)
                    filled, index = 0, index + 1
        if filled:
            np.save(out / fineweb.shard_name("edufineweb", index, "npy"), shard[:filled])
    return total


def fineweb_method(corpus: Path, out: Path, shard_size: int, workers: int, pool: str) -> int:
    argv = ["--source", str(corpus), "--out", str(out), "--shard_size", str(shard_size),
            "--workers", str(workers), "--pool", pool]
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet), \
            contextlib.redirect_stdout(quiet):
        if fineweb.main(argv) != 0:
            raise RuntimeError(f"fineweb.py {' '.join(argv)} failed")
    return json.loads((out / fineweb.MANIFEST).read_text())["tokens"]


def tiktoken_method(documents: list, workers: int) -> int:
    batches = fineweb.tokenizer().encode_ordinary_batch(documents, num_threads=workers)
    return sum(map(len, batches)) + len(documents)  # + one <|endoftext|> each, as in the shards


def measure(method: str, corpus: Path, out: Path, settings: dict, results) -> None:
    """Runs in a fresh process: one method on the corpus; puts its numbers on `results`."""
    fineweb.tokenizer()  # loading the ranks is set-up, not tokenizing
    documents = list(corpus_documents(corpus)) if method == "tiktoken" else None
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    if method == "nanogpt":
        tokens = nanogpt_method(corpus, out, settings["shard_size"])
    elif method == "fineweb":
        tokens = fineweb_method(corpus, out, settings["shard_size"], settings["workers"],
                                settings["pool"])
    else:
        tokens = tiktoken_method(documents, settings["workers"])
    seconds = time.perf_counter() - began
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    results.put({"method": method, "tokens": tokens, "seconds": seconds,
                 "main_mb": own.ru_maxrss / 1024, "worker_mb": children.ru_maxrss / 1024,
                 "cpu_s": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime})


def measure_in_fresh_process(method: str, corpus: Path, out: Path, settings: dict) -> dict:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=measure, args=(method, corpus, out, settings, results))
    process.start()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"measuring {method} failed (exit code {process.exitcode})")
    return results.get()


def same_shards(first: Path, second: Path) -> bool:
    names = sorted(path.name for path in first.glob("*.npy"))
    return names == sorted(path.name for path in second.glob("*.npy")) and all(
        (first / name).read_bytes() == (second / name).read_bytes() for name in names)


def run_round(number: int, corpus: Path, workdir: Path, settings: dict) -> dict:
    order = METHODS[number % len(METHODS):] + METHODS[:number % len(METHODS)]
    measured = {}
    for method in order:
        out = workdir / f"{method}_round{number}"
        remove_folder(out)
        measured[method] = measure_in_fresh_process(method, corpus, out, settings)
        print(f"round {number} {method:9s} {rate(measured[method]) / 1e6:6.2f}M tok/s "
              f"{measured[method]['seconds']:7.2f} s  load {os.getloadavg()[0]:.1f}", flush=True)
    identical = same_shards(workdir / f"nanogpt_round{number}", workdir / f"fineweb_round{number}")
    for method in ("nanogpt", "fineweb"):
        remove_folder(workdir / f"{method}_round{number}")
    if not identical:
        raise RuntimeError("fineweb.py and the build-nanogpt method wrote different shards")
    return measured


def remove_folder(folder: Path) -> None:
    if folder.exists():
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()


def rate(measured: dict) -> float:
    return measured["tokens"] / measured["seconds"]


def report(rounds: list, corpus: Path, settings: dict) -> str:
    lines = [f"corpus {corpus} ({corpus.stat().st_size / 1e6:.1f} MB), {len(rounds)} rounds, "
             f"{os.cpu_count()} cpus, fineweb --workers {settings['workers']} "
             f"--pool {settings['pool']}, shards of {settings['shard_size']:,} tokens",
             f"{'method':10s} {'tok/s median':>13s} {'range':>17s} {'peak MB main':>13s} "
             f"{'+worker':>8s} {'cpu s':>6s}"]
    for method in METHODS:
        rates = [rate(measured[method]) / 1e6 for measured in rounds]
        peak_main = max(measured[method]["main_mb"] for measured in rounds)
        peak_worker = max(measured[method]["worker_mb"] for measured in rounds)
        cpu = statistics.median(measured[method]["cpu_s"] for measured in rounds)
        lines.append(f"{method:10s} {statistics.median(rates):12.2f}M "
                     f"{min(rates):7.2f}M-{max(rates):6.2f}M {peak_main:13.0f} "
                     f"{peak_worker:8.0f} {cpu:6.1f}")
    for other, aim in (("nanogpt", 1.5), ("tiktoken", 0.85)):
        ratios = [rate(measured["fineweb"]) / rate(measured[other]) for measured in rounds]
        lines.append(f"fineweb / {other:8s} median {statistics.median(ratios):.2f} "
                     f"(range {min(ratios):.2f}-{max(ratios):.2f}; aim >= {aim})")
    lines.append("shards of fineweb.py and the build-nanogpt method: byte-identical")
    return "\n".join(lines)


def run_fineweb_bench(args) -> int:
    corpus = Path(args.corpus) if args.corpus else build_corpus(
        Path(args.workdir) / "stdlib_corpus.jsonl", args.min_mb)
    if not corpus.is_file():
        print(f"error: corpus {corpus} is not a file; pass a .jsonl file or omit --corpus",
              file=sys.stderr)
        return 2
    settings = {"shard_size": args.shard_size, "workers": args.workers, "pool": args.pool}
    rounds = [run_round(number, corpus, Path(args.workdir), settings)
              for number in range(args.rounds)]
    print(report(rounds, corpus, settings))
    return 0


def add_fineweb_command(commands) -> None:
    command = commands.add_parser(
        "fineweb", help="tokenizing throughput and peak memory",
        description="Tokenize one jsonl corpus with fineweb.py, with build-nanogpt's method and "
                    "with tiktoken's encode_ordinary_batch, in turns, and compare tokens/s.")
    command.add_argument("--corpus", help="a .jsonl corpus ('text' per line); default: the "
                                          "standard library's .py files, --min_mb of them")
    command.add_argument("--min_mb", type=float, default=50,
                         help="size of the default corpus (the stdlib repeats to reach it)")
    command.add_argument("--workdir", default=str(HERE / ".cache" / "bench"),
                         help="where the corpus and the shards go")
    command.add_argument("--rounds", type=int, default=3, help="each method once per round")
    command.add_argument("--shard_size", type=fineweb.token_count, default=10**7,
                         help="tokens per shard, for both fineweb.py and the nanogpt method")
    command.add_argument("--workers", type=fineweb.worker_count,
                         default=fineweb.available_cpus(),
                         help="fineweb.py's --workers and tiktoken's num_threads")
    command.add_argument("--pool", default="thread", help="fineweb.py's --pool")
    command.set_defaults(run=run_fineweb_bench)


# ----------------------------------------------------------------------------------------------
# train: optimizer steps of train_gpt2.py on random tokens

def run_train_bench(args) -> int:
    import torch
    import train_gpt2
    config = train_gpt2.TrainConfig(
        model=args.model, device=args.device, dtype=args.dtype, compile=args.compile,
        batch_size=args.batch_size, seq_len=args.seq_len,
        total_batch_size=args.batch_size * args.seq_len * args.grad_accum)
    try:
        runtime = train_gpt2.start_runtime(config)
        model_config = train_gpt2.resolve_model_config(config)
    except train_gpt2.UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    raw_model = train_gpt2.GPT(model_config).to(runtime.device)
    optimizer = raw_model.make_optimizer(config.weight_decay, runtime.device.type)
    use_compile = args.compile if args.compile is not None else runtime.device.type == "cuda"
    model = torch.compile(raw_model) if use_compile else raw_model
    rng = np.random.default_rng(0)
    step_seconds = []
    for step in range(args.warmup_steps + args.steps):
        window = rng.integers(0, 50257, config.total_batch_size + 1).astype(np.uint16)
        started = time.perf_counter()
        train_gpt2.train_step(model, optimizer, window, args.grad_accum, config, runtime)
        step_seconds.append(time.perf_counter() - started)  # train_step ends with a sync
    print(train_report(args, runtime, raw_model, config, step_seconds, use_compile))
    return 0


def train_report(args, runtime, raw_model, config, step_seconds, use_compile) -> str:
    import train_gpt2
    timed = step_seconds[args.warmup_steps:]
    seconds = statistics.median(timed)
    tokens_per_s = config.total_batch_size / seconds
    peak = train_gpt2.peak_flops(runtime)
    flops = raw_model.flops_per_token(config.seq_len) * tokens_per_s
    mfu = f"{flops / peak:.1%}" if peak else "n/a (no known bf16 peak for this device)"
    lines = [
        f"model      {args.model}, {raw_model.num_params() / 1e6:.2f}M params",
        f"setup      {train_gpt2.hardware_line(runtime)}, compile {use_compile}, "
        f"B={config.batch_size} T={config.seq_len} accum={args.grad_accum}",
        f"first step {step_seconds[0]:.2f} s (includes compilation when on)",
        f"step       {seconds * 1000:.1f} ms median of {len(timed)} "
        f"(range {min(timed) * 1000:.1f}-{max(timed) * 1000:.1f})",
        f"tokens/s   {tokens_per_s:,.0f}",
        f"mfu        {mfu}",
    ]
    return "\n".join(lines)


def add_train_command(commands) -> None:
    command = commands.add_parser(
        "train", help="tokens/s and MFU of train_gpt2.py's optimizer step on random tokens")
    command.add_argument("--model", default="d4", help="preset (default %(default)s)")
    command.add_argument("--device", default="auto", help="auto, cuda, cpu or mps")
    command.add_argument("--dtype", default="auto", help="auto, bfloat16 or float32")
    command.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                         help="torch.compile (default: on for CUDA)")
    command.add_argument("--batch_size", type=int, default=8, help="micro-batch B")
    command.add_argument("--seq_len", type=int, default=256, help="sequence length T")
    command.add_argument("--grad_accum", type=int, default=1, help="micro-batches per step")
    command.add_argument("--steps", type=int, default=10, help="timed steps")
    command.add_argument("--warmup_steps", type=int, default=3,
                         help="untimed first steps (compilation, allocator warm-up)")
    command.set_defaults(run=run_train_bench)


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add_fineweb_command(commands)
    add_train_command(commands)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
