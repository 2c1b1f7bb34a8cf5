"""HellaSwag accuracy (validation split, 10,042 examples) for our checkpoints and for GPT-2.

    python hellaswag.py --ckpt log/cosine/ckpt_019073.pt      # one of our runs
    python hellaswag.py --model gpt2                           # OpenAI's GPT-2 (124M), baseline
    python hellaswag.py --model path/to/hf_dir --data hellaswag_val.jsonl --limit 500

Each example is scored as a completion: the context's tokens followed by the tokens of
" " + ending, once for each of its 4 endings. The model predicts the ending it finds most
likely: the lowest loss summed over the ending's tokens for `acc`, the lowest loss per token for
`acc_norm`. train_gpt2.py --hellaswag_every N uses load_examples() and evaluate() from here.
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from fineweb import TokenizerUnavailable, gpt2_encoding

HF_DATASET = "Rowan/hellaswag"  # Hugging Face mirror of the validation split; label is a string
GITHUB_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
CACHE_NAME = "hellaswag_val.jsonl"  # the original file's name, in the original jsonl format
DOWNLOAD_TIMEOUT_S = 60  # per network operation of the GitHub fallback
NUM_ENDINGS = 4
GPT2_VOCAB_SIZE = 50257  # HellaSwag is read with GPT-2's tokenizer: ids 0..50256


class HellaSwagUnavailable(RuntimeError):
    """HellaSwag cannot be evaluated as asked: the data is missing or malformed, or the model
    cannot read GPT-2 tokens. The message is one line naming the problem and the fix."""


# ----------------------------------------------------------------------------------------------
# Data: download once, cache as jsonl, read and check

def load_examples(data_path=None, cache_dir="hellaswag", limit=None) -> list[dict]:
    """The validation examples (dicts with ctx, endings, label as int), the first `limit` only
    when it is given. Reads data_path, else the cache in cache_dir, downloading it first when
    it is missing (with torch.distributed, rank 0 downloads and the other ranks wait)."""
    if limit is not None and limit < 1:
        raise HellaSwagUnavailable(f"a HellaSwag limit of {limit} leaves nothing to evaluate; "
                                   f"give a limit of at least 1 example")
    if data_path is not None:
        path = Path(data_path)
        if not path.is_file():
            raise HellaSwagUnavailable(f"no HellaSwag file at {path}; pass the validation split "
                                       f"in the original jsonl format ({CACHE_NAME})")
    else:
        path = Path(cache_dir) / CACHE_NAME
        ensure_cached(path)
    return read_examples(path, limit)


def ensure_cached(path: Path) -> None:
    """Download to path unless it exists. Only rank 0 downloads, so no two processes write the
    file; every rank then checks it is there (a multi-node run needs path on a shared disk)."""
    rank, world = rank_and_world()
    failure = None
    if rank == 0 and not path.exists():
        try:
            download_examples(path)
        except HellaSwagUnavailable as error:
            # Raised after the barrier, so the other ranks are not left waiting for rank 0.
            failure = error
    if world > 1:
        dist.barrier()
    if failure is not None:
        raise failure
    if not path.exists():
        raise HellaSwagUnavailable(missing_data_message(path, f"rank {rank} does not see it"))


def download_examples(path: Path) -> None:
    """Fetch the validation split into path as jsonl: Hugging Face first, then GitHub."""
    sources = [("Hugging Face", HF_DATASET, rows_from_hugging_face),
               ("GitHub", GITHUB_URL, rows_from_github)]
    failures = []
    for site, address, fetch in sources:
        print(f"downloading HellaSwag validation from {site} ({address})", file=sys.stderr)
        try:
            rows = fetch()
        except Exception as error:  # datasets, huggingface_hub and urllib raise their own types
            failures.append(f"{site}: {type(error).__name__}")
            continue
        if not rows or any(example_problem(row) for row in rows):
            failures.append(f"{site}: not HellaSwag examples")  # never cached, so not reused
            continue
        try:
            write_jsonl_atomically(path, rows)
        except OSError as error:
            raise HellaSwagUnavailable(f"cannot write {path} ({error.strerror}); make "
                                       f"{path.parent} writable or pass --data PATH") from error
        print(f"cached {len(rows)} HellaSwag examples at {path}", file=sys.stderr)
        return
    raise HellaSwagUnavailable(missing_data_message(path, "; ".join(failures)))


def missing_data_message(path: Path, reason: str) -> str:
    return (f"cannot get HellaSwag ({reason}); put the validation split as jsonl in the "
            f"original format at {path} or pass --data PATH")


def rows_from_hugging_face() -> list[dict]:
    from datasets import load_dataset  # slow to import and needed only for this one download
    return original_format(load_dataset(HF_DATASET, split="validation"))


def original_format(hf_rows) -> list[dict]:
    """Hugging Face rows hold the original fields, except that label is a string there."""
    return [dict(row, label=int(row["label"])) for row in hf_rows]


def rows_from_github() -> list[dict]:
    with urllib.request.urlopen(GITHUB_URL, timeout=DOWNLOAD_TIMEOUT_S) as response:
        text = response.read().decode("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_jsonl_atomically(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temporary name, so two runs sharing one cache_dir never write the same file.
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent,
                                     prefix=path.name + ".", suffix=".tmp", delete=False) as f:
        try:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        except BaseException:
            os.unlink(f.name)
            raise
    os.replace(f.name, path)


def read_examples(path: Path, limit=None) -> list[dict]:
    examples = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if limit is not None and len(examples) >= limit:
                break
            if line.strip():
                examples.append(parse_example(line, f"{path}:{line_number}"))
    if not examples:
        raise HellaSwagUnavailable(f"{path} holds no HellaSwag examples; pass the validation "
                                   f"split in the original jsonl format ({CACHE_NAME})")
    return examples


def parse_example(line: str, where: str) -> dict:
    """One jsonl line as a dict with an int label; raises with the file and line when it is
    not a HellaSwag example."""
    try:
        example = json.loads(line)
        problem = example_problem(example)
    except json.JSONDecodeError:
        problem = "not valid JSON"
    if problem is not None:
        raise HellaSwagUnavailable(f"{where} is not a HellaSwag example ({problem}); use the "
                                   f"validation split in the original jsonl format "
                                   f"(ctx, endings, label)")
    # Copies converted from Hugging Face may keep its string labels.
    return dict(example, label=int(example["label"]))


def example_problem(example) -> str | None:
    if not isinstance(example, dict):
        return "not a JSON object"
    ctx, endings, label = example.get("ctx"), example.get("endings"), example.get("label")
    if not isinstance(ctx, str) or not ctx:
        return "ctx must be a non-empty string"
    if (not isinstance(endings, list) or len(endings) != NUM_ENDINGS
            or not all(isinstance(ending, str) for ending in endings)):
        return f"endings must be a list of {NUM_ENDINGS} strings"
    if str(label) not in [str(index) for index in range(NUM_ENDINGS)]:
        return f"label must be 0..{NUM_ENDINGS - 1}, got {label!r}"
    return None


# ----------------------------------------------------------------------------------------------
# Rendering: token rows and masks

def render_example(example: dict, encoding, block_size: int):
    """The 4 token rows (context + " " + ending) and their masks (1 on the ending's tokens).

    A row longer than block_size loses tokens from the start of the context, the same number
    for all 4 rows, so that the longest ending fits and every ending follows the same context.
    An ending longer than block_size - 1 tokens keeps only its first block_size - 1 tokens,
    after the context's last token.
    """
    context = encoding.encode(example["ctx"])
    endings = [encoding.encode(" " + ending) for ending in example["endings"]]
    longest = max(len(ending) for ending in endings)
    context = context[-max(block_size - longest, 1):]
    endings = [ending[:block_size - len(context)] for ending in endings]
    rows = [context + ending for ending in endings]
    masks = [[0] * len(context) + [1] * len(ending) for ending in endings]
    return rows, masks


def collate(rendered: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of several rendered examples, right-padded with token 0 and mask 0 to the longest:
    with causal attention, padding after a row cannot change the logits of the row itself."""
    rows = [row for example_rows, _ in rendered for row in example_rows]
    masks = [mask for _, example_masks in rendered for mask in example_masks]
    width = max(len(row) for row in rows)
    tokens = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, (row, row_mask) in enumerate(zip(rows, masks)):
        tokens[index, :len(row)] = torch.tensor(row)
        mask[index, :len(row)] = torch.tensor(row_mask)
    return tokens, mask


# ----------------------------------------------------------------------------------------------
# Scoring

def ending_losses(model, tokens, mask, autocast_dtype=None):
    """Per row: the loss summed over the masked tokens, and how many tokens that was."""
    R, T = tokens.shape
    with autocast(tokens.device, autocast_dtype):
        logits, _ = model(tokens)  # (R, T, V)
    # Position t predicts token t + 1, so the ending's tokens are scored one position early.
    scored = mask[:, 1:].bool()  # (R, T-1)
    row_of_token = scored.nonzero()[:, 0]  # (K,) for the K scored tokens of the batch
    losses = F.cross_entropy(logits[:, :-1][scored].float(), tokens[:, 1:][scored],
                             reduction="none")  # (K,)
    summed = torch.zeros(R, device=tokens.device).index_add_(0, row_of_token, losses)
    return summed, scored.sum(dim=1)


def autocast(device: torch.device, dtype):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def score_batch(model, examples, encoding, device, autocast_dtype=None) -> torch.Tensor:
    """[examples, correct by summed loss, correct by loss per token] for one batch."""
    block_size = model.config.block_size
    tokens, mask = collate([render_example(e, encoding, block_size) for e in examples])
    summed, counts = ending_losses(model, tokens.to(device), mask.to(device), autocast_dtype)
    summed = summed.view(-1, NUM_ENDINGS)  # (N, 4)
    per_token = summed / counts.view(-1, NUM_ENDINGS)  # (N, 4)
    labels = torch.tensor([e["label"] for e in examples], device=device)
    correct = (summed.argmin(dim=1) == labels).sum()
    correct_norm = (per_token.argmin(dim=1) == labels).sum()
    return torch.stack([labels.new_tensor(len(examples)), correct, correct_norm])


def evaluate(model, examples, device, batch_size=8, autocast_dtype=None,
             progress=False) -> dict:
    """acc and acc_norm of model on examples, with the counts behind them. With torch.distributed
    initialised, rank r scores examples r, r+world, ... and one all_reduce sums the counts, so
    every rank must call this with the same examples. batch_size counts examples (4 rows each).
    The model is evaluated in eval mode and no_grad, then put back in the mode it was in."""
    if not examples:
        raise HellaSwagUnavailable("no HellaSwag examples to evaluate; load at least one")
    model = unwrap(model)
    check_vocabulary(model)
    rank, world = rank_and_world()
    device = torch.device(device)
    encoding = gpt2_encoding()
    mine = examples[rank::world]
    counts = torch.zeros(3, dtype=torch.long, device=device)  # examples, correct, correct_norm
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            starts = range(0, len(mine), batch_size)
            for start in tqdm(starts, desc="hellaswag", unit="batch", disable=not progress):
                batch = mine[start:start + batch_size]
                counts += score_batch(model, batch, encoding, device, autocast_dtype)
    finally:
        model.train(was_training)
    if world > 1:
        dist.all_reduce(counts)
    count, correct, correct_norm = counts.tolist()
    return {"count": count, "correct": correct, "correct_norm": correct_norm,
            "acc": correct / count, "acc_norm": correct_norm / count}


def unwrap(model):
    """The plain GPT inside a DDP or torch.compile wrapper: it shares their weights, skips
    DDP's gradient hooks and is not recompiled for every new padded batch length."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def check_vocabulary(model) -> None:
    vocab_size = model.config.vocab_size
    if vocab_size < GPT2_VOCAB_SIZE:
        raise HellaSwagUnavailable(f"the model's vocabulary has {vocab_size} tokens, fewer than "
                                   f"GPT-2's {GPT2_VOCAB_SIZE}, so it cannot read HellaSwag; "
                                   f"evaluate a model with the GPT-2 vocabulary")


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ----------------------------------------------------------------------------------------------
# Command line

DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one `error:` line (exit 2), without the usage."""

    def error(self, message):
        self.exit(2, f"error: {message}; see `python {self.prog} --help`\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineParser(prog="hellaswag.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ckpt", help="one of our checkpoints, e.g. log/cosine/ckpt_019073.pt")
    source.add_argument("--model", help="Hugging Face GPT-2: a hub name (gpt2, gpt2-medium, "
                                        "gpt2-large, gpt2-xl) or a save_pretrained directory")
    parser.add_argument("--data", help="local HellaSwag validation jsonl in the original format; "
                                       "default: download it once into --cache_dir")
    parser.add_argument("--cache_dir", default="hellaswag",
                        help="where the downloaded validation jsonl is kept (default: hellaswag)")
    parser.add_argument("--limit", type=positive_int,
                        help="evaluate only the first LIMIT examples (default: all 10,042)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                        help="auto picks cuda, then mps, then cpu")
    parser.add_argument("--batch_size", type=positive_int, default=8,
                        help="examples per forward pass, 4 rows each (default: 8)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES),
                        help="autocast dtype of the forward pass; float32 means no autocast")
    args = parser.parse_args(argv)
    args.device = resolve_device(parser, args.device)
    if args.dtype == "float16" and args.device == "cpu":
        parser.error("--dtype float16 is for cuda or mps; use bfloat16 or float32 on the cpu")
    if args.ckpt is not None and not Path(args.ckpt).is_file():
        parser.error(f"no checkpoint at {args.ckpt}; pass --ckpt log/<run>/ckpt_<step>.pt")
    return args


def resolve_device(parser, requested: str) -> str:
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if requested == "auto":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if (requested == "cuda" and not cuda) or (requested == "mps" and not mps):
        parser.error(f"--device {requested} is not available here; use --device auto or cpu")
    return requested


def load_model(args):
    """Our checkpoint or Hugging Face GPT-2 as a GPT on args.device."""
    from train_gpt2 import GPT, load_model_from_checkpoint  # train_gpt2 imports this file
    if args.ckpt is not None:
        return load_model_from_checkpoint(args.ckpt, args.device)
    return GPT.from_pretrained(args.model).to(args.device)


def print_summary(name: str, result: dict, seconds: float) -> None:
    count = result["count"]
    print(f"model     {name}")
    print(f"count     {count}")
    print(f"acc       {result['acc']:.4f}  ({result['correct']}/{count}, summed loss)")
    print(f"acc_norm  {result['acc_norm']:.4f}  ({result['correct_norm']}/{count}, "
          f"loss per token)")
    print(f"time      {seconds:.1f} s")


def main(argv=None) -> int:
    args = parse_args(argv)
    from train_gpt2 import UserError
    try:
        examples = load_examples(args.data, args.cache_dir, args.limit)
        model = load_model(args)
        started = time.time()
        result = evaluate(model, examples, args.device, args.batch_size, DTYPES[args.dtype],
                          progress=True)
    except (HellaSwagUnavailable, TokenizerUnavailable, UserError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_summary(args.ckpt or args.model, result, time.time() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
