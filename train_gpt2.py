"""Pretrain GPT-2 with a chosen learning-rate schedule.

    torchrun --standalone --nproc_per_node=8 train_gpt2.py --lr_schedule step
    python train_gpt2.py --model d4 --device cpu --max_steps 200 --lr_schedule cosine

The file reads top to bottom: the model, the data, the configuration, checkpoints, evaluation,
and the training loop. Every run writes log/<run_name>/log.txt and its checkpoints.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn import functional as F

import schedulers


class UserError(RuntimeError):
    """A problem the user can fix; main() prints its one-line message and exits with code 2."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; main() prints the message and exits with code 3."""


# ----------------------------------------------------------------------------------------------
# The model: GPT-2 as published (pre-LayerNorm, learned positions, tied embeddings)

@dataclass
class GPTConfig:
    block_size: int = 1024  # longest sequence the position embedding covers
    vocab_size: int = 50304  # GPT-2's 50257 tokens padded to a multiple of 128 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768


MODEL_PRESETS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    # Small models for CPUs and tests: depth d, width 64*d, d heads of 64.
    **{f"d{d}": dict(n_layer=d, n_head=d, n_embd=64 * d) for d in (2, 4, 6, 12)},
}


class CausalSelfAttention(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.residual_scaled_init = True

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # flash attention on CUDA
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual_scaled_init = True

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)

    def _init_weights(self, module):
        std = 0.02
        if getattr(module, "residual_scaled_init", False):
            # Each block adds two residual branches; keep the residual stream's variance flat.
            std *= (2 * self.config.n_layer) ** -0.5
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def forward(self, idx, targets=None):
        B, T = idx.size()
        assert T <= self.config.block_size, f"sequence of {T} > block_size"
        positions = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(positions)  # (B, T, C)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied matrix counts once

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token: 6 per weight plus attention's scores (PaLM, appendix B)."""
        weights = self.num_params() - self.transformer.wpe.weight.numel()
        return 6 * weights + 12 * self.config.n_layer * self.config.n_embd * seq_len

    def make_optimizer(self, weight_decay: float, device_type: str):
        # Decay matrices and embeddings only; biases and LayerNorm gains stay undecayed.
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=weight_decay),
                  dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
        fused = device_type in ("cuda", "cpu")
        return torch.optim.AdamW(groups, lr=0.0, betas=(0.9, 0.95), eps=1e-8, fused=fused)

    @classmethod
    def from_pretrained(cls, name_or_dir: str) -> "GPT":
        """GPT-2 weights from the Hugging Face hub ("gpt2", "gpt2-xl") or a save_pretrained dir."""
        try:
            from transformers import GPT2LMHeadModel
            hf_model = GPT2LMHeadModel.from_pretrained(name_or_dir)
        except Exception as error:  # network, missing files, wrong model type: all user-fixable
            raise UserError(f"cannot load GPT-2 weights from {name_or_dir!r} "
                            f"({type(error).__name__}); give a hub name such as gpt2 with "
                            f"network access, or a directory written by save_pretrained")
        hf_config = hf_model.config
        config = GPTConfig(block_size=hf_config.n_positions, vocab_size=hf_config.vocab_size,
                           n_layer=hf_config.n_layer, n_head=hf_config.n_head,
                           n_embd=hf_config.n_embd)
        model = cls(config)
        hf_state = hf_model.state_dict()
        # The checkpoint stores these as Conv1D weights, (in, out): transposed from nn.Linear.
        conv1d = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                  "mlp.c_proj.weight")
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                source = hf_state[name]
                tensor.copy_(source.t() if name.endswith(conv1d) else source)
        return model


def resolve_model_config(args) -> GPTConfig:
    if args.model not in MODEL_PRESETS:
        raise UserError(f"unknown --model {args.model!r}; choose one of "
                        f"{', '.join(MODEL_PRESETS)}")
    shape = dict(MODEL_PRESETS[args.model], vocab_size=args.vocab_size)
    for name in ("n_layer", "n_head", "n_embd", "block_size"):
        if getattr(args, name) is not None:
            shape[name] = getattr(args, name)
    config = GPTConfig(**shape)
    if config.n_embd % config.n_head:
        raise UserError(f"n_embd {config.n_embd} is not divisible by n_head {config.n_head}; "
                        f"change --n_embd or --n_head")
    return config


# ----------------------------------------------------------------------------------------------
# Data: uint16 token shards, memory-mapped

BIN_MAGIC, BIN_VERSION, BIN_HEADER_BYTES = 20240520, 1, 256 * 4
MAKE_DATA = "run `python fineweb.py` to make shards"


def open_shard(path: Path) -> np.ndarray:
    """A shard's tokens as a read-only uint16 memory map (.npy or llm.c's .bin)."""
    if path.suffix == ".npy":
        try:
            tokens = np.load(path, mmap_mode="r")
        except (ValueError, OSError, EOFError) as error:
            raise UserError(f"shard {path} is unreadable ({error}); {MAKE_DATA}")
        if tokens.dtype != np.uint16 or tokens.ndim != 1:
            raise UserError(f"shard {path} holds {tokens.dtype} of shape {tokens.shape}, "
                            f"expected 1-D uint16 tokens; {MAKE_DATA}")
        return tokens
    header = np.fromfile(path, dtype=np.int32, count=256)
    if len(header) < 256 or header[0] != BIN_MAGIC or header[1] != BIN_VERSION:
        raise UserError(f"shard {path} has no llm.c header (magic {BIN_MAGIC}, version "
                        f"{BIN_VERSION}); {MAKE_DATA}")
    num_tokens = int(header[2])
    expected_bytes = BIN_HEADER_BYTES + 2 * num_tokens
    if path.stat().st_size < expected_bytes:
        raise UserError(f"shard {path} is truncated: {path.stat().st_size} bytes, header "
                        f"promises {expected_bytes}; {MAKE_DATA}")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=BIN_HEADER_BYTES,
                     shape=(num_tokens,))


def find_shards(data_dir: str, split: str) -> list:
    folder = Path(data_dir)
    if not folder.is_dir():
        raise UserError(f"data dir {folder} does not exist; {MAKE_DATA} or pass --data_dir")
    paths = sorted(p for p in folder.iterdir()
                   if p.suffix in (".npy", ".bin") and split in p.name)
    if not paths:
        raise UserError(f"no {split} shards (*{split}*.npy or .bin) in {folder}; {MAKE_DATA}")
    return paths


class TrainStream:
    """Optimizer step N reads one contiguous window of the token stream, the same on every
    rank. Micro-batches are slices of that window, so the tokens of a step do not depend on how
    it is split into ranks x accumulation steps, and the position is one small dict to save."""

    def __init__(self, paths: list, window: int, vocab_size: int, seed: int, shuffle: bool):
        self.paths, self.window, self.vocab_size = paths, window, vocab_size
        self.seed, self.shuffle = seed, shuffle
        self.position = dict(epoch=0, shard=0, offset=0)
        self._open_index, self._tokens = None, None
        if not any(len(open_shard(p)) > window for p in paths):
            raise UserError(f"every train shard in {paths[0].parent} is shorter than one "
                            f"optimizer step ({window + 1} tokens); make larger shards or "
                            f"lower --total_batch_size")

    def shard_order(self, epoch: int) -> list:
        order = list(range(len(self.paths)))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order).tolist()
        return order

    def tokens_of(self, index: int) -> np.ndarray:
        if index != self._open_index:
            self._open_index, self._tokens = index, open_shard(self.paths[index])
        return self._tokens

    def next_window(self) -> np.ndarray:
        """The window+1 tokens of the next optimizer step; a shard's tail shorter than that is
        skipped."""
        while True:
            pos = self.position
            index = self.shard_order(pos["epoch"])[pos["shard"]]
            tokens = self.tokens_of(index)
            if pos["offset"] + self.window + 1 <= len(tokens):
                chunk = np.asarray(tokens[pos["offset"]:pos["offset"] + self.window + 1])
                pos["offset"] += self.window
                self.check_vocab(chunk, index)
                return chunk
            pos["shard"], pos["offset"] = pos["shard"] + 1, 0
            if pos["shard"] == len(self.paths):
                pos["epoch"], pos["shard"] = pos["epoch"] + 1, 0

    def check_vocab(self, chunk: np.ndarray, index: int) -> None:
        largest = int(chunk.max())
        if largest >= self.vocab_size:
            raise UserError(f"shard {self.paths[index]} holds token id {largest} >= vocab_size "
                            f"{self.vocab_size}; raise --vocab_size or remake the shards")

    def state_dict(self) -> dict:
        return dict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.position = dict(state)


def micro_batch(window: np.ndarray, index: int, B: int, T: int, device: torch.device):
    """Inputs and targets of micro-batch `index` inside a step's window."""
    part = torch.from_numpy(window[index * B * T:(index + 1) * B * T + 1].astype(np.int64))
    x, y = part[:-1].view(B, T), part[1:].contiguous().view(B, T)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device,
                                                                               non_blocking=True)
    return x.to(device), y.to(device)


def load_val_tokens(data_dir: str, count: int) -> np.ndarray:
    """The first `count` tokens of the val shards, in memory (a few MB at most)."""
    pieces, have = [], 0
    for path in find_shards(data_dir, "val"):
        pieces.append(np.asarray(open_shard(path)[:count - have]))
        have += len(pieces[-1])
        if have >= count:
            break
    return np.concatenate(pieces)


# ----------------------------------------------------------------------------------------------
# Configuration: one typed dataclass; argparse flags are generated from it

def flag(default, group, help):
    """A config field that is also a command-line flag, listed under `group` in --help."""
    return field(default=default, metadata=dict(group=group, help=help))


@dataclass
class TrainConfig:
    model: str = flag("gpt2", "model",
                      "preset: gpt2, gpt2-medium, gpt2-large, gpt2-xl, d2, d4, d6, d12")
    n_layer: Optional[int] = flag(None, "model", "override the preset's number of layers")
    n_head: Optional[int] = flag(None, "model", "override the preset's attention heads")
    n_embd: Optional[int] = flag(None, "model", "override the preset's width")
    block_size: Optional[int] = flag(None, "model", "override the preset's context (1024)")
    vocab_size: int = flag(50304, "model", "vocabulary size; smaller only for synthetic data")

    data_dir: str = flag("edu_fineweb10B", "data", "folder of *train*/*val* .npy or .bin shards")
    shuffle_shards: bool = flag(False, "data", "shuffle train shard order each epoch (seeded)")
    batch_size: int = flag(64, "data", "micro-batch size B per rank")
    seq_len: int = flag(1024, "data", "sequence length T")
    total_batch_size: int = flag(524288, "data", "tokens per optimizer step, all ranks")

    weight_decay: float = flag(0.1, "optimizer", "AdamW weight decay on 2-D tensors")
    grad_clip: float = flag(1.0, "optimizer", "clip the gradient norm at this, 0 disables")
    seed: int = flag(1337, "optimizer", "seed of the initial weights and data order")

    device: str = flag("auto", "hardware", "auto, cuda, cpu or mps")
    dtype: str = flag("auto", "hardware",
                      "auto (bfloat16 on CUDA, else float32), bfloat16 or float32")
    compile: Optional[bool] = flag(None, "hardware", "torch.compile (default: on for CUDA)")

    val_every: int = flag(250, "evaluation", "val loss every this many steps, 0 disables")
    val_tokens: int = flag(10_485_760, "evaluation", "tokens per validation, any rank count")
    hellaswag_every: int = flag(250, "evaluation", "HellaSwag every this many steps, 0 disables")
    hellaswag_limit: int = flag(0, "evaluation", "score only the first N examples, 0 = all")
    sample_every: int = flag(250, "evaluation", "text sample every this many steps, 0 disables")

    log_dir: str = flag("log", "run folder", "parent folder of the run folders")
    run_name: str = flag("", "run folder", "run folder name (default: the schedule's name)")
    resume: bool = flag(False, "run folder", "continue from the run's latest checkpoint")
    ckpt_every: int = flag(5000, "run folder", "checkpoint every this many steps and at the end")
    keep_ckpts: int = flag(2, "run folder", "keep only the newest this many checkpoints")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {}
    for f in dataclasses.fields(TrainConfig):
        name = f.metadata["group"]
        group = groups.get(name) or groups.setdefault(name, parser.add_argument_group(name))
        shown_default = "" if f.default in (None, "") else f" (default: {f.default})"
        help_text = f.metadata["help"] + shown_default
        if f.type in (bool, Optional[bool]):
            group.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction,
                               default=f.default, help=help_text)
        else:
            kind = int if f.type == Optional[int] else f.type
            group.add_argument(f"--{f.name}", type=kind, default=f.default, help=help_text)
    schedulers.add_schedule_args(parser.add_argument_group("learning-rate schedule"))
    return parser


def validate(config: TrainConfig, world_size: int) -> int:
    """Checks that need more than one flag; returns the gradient accumulation steps."""
    positive = ("batch_size", "seq_len", "total_batch_size", "vocab_size", "val_tokens",
                "keep_ckpts", "ckpt_every")
    for name in positive:
        if getattr(config, name) <= 0:
            raise UserError(f"--{name} must be positive, got {getattr(config, name)}")
    for name in ("val_every", "hellaswag_every", "hellaswag_limit", "sample_every"):
        if getattr(config, name) < 0:
            raise UserError(f"--{name} must be 0 (off) or positive")
    if config.grad_clip < 0 or config.weight_decay < 0:
        raise UserError("--grad_clip and --weight_decay must not be negative")
    tokens_per_micro_step = config.batch_size * config.seq_len * world_size
    if config.total_batch_size % tokens_per_micro_step:
        raise UserError(f"--total_batch_size {config.total_batch_size} is not divisible by "
                        f"batch_size x seq_len x ranks = {tokens_per_micro_step}; change one")
    return config.total_batch_size // tokens_per_micro_step


# ----------------------------------------------------------------------------------------------
# Processes and devices

@dataclass
class Runtime:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    dtype: torch.dtype

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str) -> str:
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but CUDA is not available; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps but MPS is not available; use --device cpu")
    return name


def start_runtime(config: TrainConfig) -> Runtime:
    """Single process, or one process per GPU (or CPU rank) when launched by torchrun."""
    if config.device not in ("auto", "cuda", "cpu", "mps"):
        raise UserError(f"--device {config.device!r}: choose auto, cuda, cpu or mps")
    if config.dtype not in ("auto", "bfloat16", "float32"):
        raise UserError(f"--dtype {config.dtype!r}: choose auto, bfloat16 or float32")
    device_type = pick_device(config.device)
    rank, local_rank, world_size = (int(os.environ.get(k, d)) for k, d in
                                    (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    device = torch.device(device_type)
    if device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if "RANK" in os.environ:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    dtype = config.dtype
    if dtype == "auto":
        # bf16 on CPUs without bf16 units is 20-40x slower than fp32 (MACHINE-NOTES).
        dtype = "bfloat16" if device_type == "cuda" else "float32"
    return Runtime(rank, local_rank, world_size, device, getattr(torch, dtype))


def autocast(runtime: Runtime):
    if runtime.dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=runtime.dtype)


def all_reduce_sum(values: list, runtime: Runtime) -> list:
    tensor = torch.tensor(values, dtype=torch.float64, device=runtime.device)
    if runtime.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


BF16_PEAK_FLOPS = {  # dense bf16 tensor-core peak per GPU, by a substring of its name
    "H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "A10G": 70e12,
    "L40S": 362e12, "L4": 121e12, "4090": 165e12, "3090": 71e12,
}


def peak_flops(runtime: Runtime) -> Optional[float]:
    if runtime.device.type != "cuda" or runtime.dtype != torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(runtime.device)
    return next((peak for key, peak in BF16_PEAK_FLOPS.items() if key in name), None)


def hardware_line(runtime: Runtime) -> str:
    if runtime.device.type == "cuda":
        name = torch.cuda.get_device_name(runtime.device)
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            models = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                      if line.startswith("model name")]
            name = models[0] if models else name
    return f"{runtime.world_size} x {runtime.device.type} ({name}), {runtime.dtype}"


def versions_line() -> str:
    versions = [f"python {platform.python_version()}", f"torch {torch.__version__}",
                f"numpy {np.__version__}"]
    if torch.version.cuda:
        versions.append(f"cuda {torch.version.cuda}")
    return " | ".join(versions)


# ----------------------------------------------------------------------------------------------
# The run folder: log and checkpoints

class RunLog:
    """log.txt, appended line by line so `tail -f` works; only rank 0 writes."""

    def __init__(self, path: Path, enabled: bool):
        self.file = open(path, "a", buffering=1) if enabled else None

    def write(self, line: str) -> None:
        if self.file:
            self.file.write(line + "\n")

    def comment(self, text: str) -> None:
        self.write(f"# {text}")

    def close(self) -> None:
        if self.file:
            self.file.close()


def checkpoints(run_dir: Path) -> list:
    """Finished checkpoints, oldest first (a .tmp from a killed write is not one)."""
    return sorted(run_dir.glob("ckpt_*.pt"))


def save_checkpoint(run_dir: Path, state: dict, step: int, keep: int) -> Path:
    path = run_dir / f"ckpt_{step:06d}.pt"
    temporary = path.with_name(path.name + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)
    for old in checkpoints(run_dir)[:-keep]:
        old.unlink()
    return path


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, foreign or corrupt files all end here
        raise UserError(f"cannot read checkpoint {path} ({type(error).__name__}: "
                        f"{str(error).splitlines()[0][:120]}); delete it to fall back to an "
                        f"older one")


def check_resumable(checkpoint: dict, path: Path, model_config: GPTConfig,
                    schedule_record: dict, config: TrainConfig) -> None:
    """Refuse a checkpoint whose model, schedule or data order differ from this run's."""
    data_order = ("seed", "total_batch_size", "seq_len", "shuffle_shards")
    mismatches = [
        *differences("model", checkpoint["model_config"], dataclasses.asdict(model_config)),
        *differences("schedule", checkpoint["schedule"]["config"], schedule_record),
        *differences("data", {k: checkpoint["config"][k] for k in data_order},
                     {k: getattr(config, k) for k in data_order}),
    ]
    if mismatches:
        raise UserError(f"checkpoint {path} belongs to another run: {', '.join(mismatches)}; "
                        f"resume with the original flags or start a new --run_name")


def differences(label: str, saved: dict, current: dict) -> list:
    return [f"{label} {key} {saved.get(key)} -> {current.get(key)}"
            for key in sorted(set(saved) | set(current)) if saved.get(key) != current.get(key)]


def load_model_from_checkpoint(path, device="cpu") -> GPT:
    """The model of one of our checkpoints, in eval mode (for hellaswag.py and sampling)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; give a ckpt_*.pt from a run folder")
    checkpoint = load_checkpoint(path)
    if "model_config" not in checkpoint:
        raise UserError(f"{path} is not a train_gpt2.py checkpoint")
    model = GPT(GPTConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()


def rng_state() -> dict:
    state = dict(torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Evaluation: validation loss, HellaSwag, samples

@torch.no_grad()
def validation_loss(model, val_tokens: np.ndarray, B: int, T: int, runtime: Runtime) -> float:
    """Mean loss over the same val tokens whatever the number of ranks: batch i goes to rank
    i % world_size and the per-batch losses are summed across ranks."""
    model.eval()
    num_batches = (len(val_tokens) - 1) // (B * T)
    total, count = 0.0, 0
    for index in range(runtime.rank, num_batches, runtime.world_size):
        x, y = micro_batch(val_tokens, index, B, T, runtime.device)
        with autocast(runtime):
            _, loss = model(x, y)
        total, count = total + loss.item(), count + 1
    model.train()
    total, count = all_reduce_sum([total, count], runtime)
    return total / count


def hellaswag_accuracy(raw_model, examples: list, runtime: Runtime) -> float:
    import hellaswag
    autocast_dtype = None if runtime.dtype == torch.float32 else runtime.dtype
    result = hellaswag.evaluate(raw_model, examples, runtime.device,
                                autocast_dtype=autocast_dtype)
    return result["acc_norm"]


@torch.no_grad()
def sample_text(raw_model, encoding, runtime: Runtime, seed: int, num_samples=4,
                num_tokens=32, prompt="Hello, I'm a language model,") -> list:
    """Top-50 sampling from a fixed seed, on its own generator so training RNG is untouched."""
    raw_model.eval()
    generator = torch.Generator(device=runtime.device).manual_seed(seed)
    tokens = torch.tensor(encoding.encode_ordinary(prompt), device=runtime.device)
    tokens = tokens.unsqueeze(0).repeat(num_samples, 1)
    for _ in range(num_tokens):
        with autocast(runtime):
            logits, _ = raw_model(tokens[:, -raw_model.config.block_size:])
        # The padded vocabulary's extra rows are no tokens; never sample them.
        probs = F.softmax(logits[:, -1, :encoding.n_vocab].float(), dim=-1)
        top_probs, top_ids = torch.topk(probs, 50, dim=-1)
        choice = torch.multinomial(top_probs, 1, generator=generator)
        tokens = torch.cat([tokens, torch.gather(top_ids, -1, choice)], dim=1)
    raw_model.train()
    return [encoding.decode(row.tolist()) for row in tokens]


# ----------------------------------------------------------------------------------------------
# Training

def prepare_run_dir(config: TrainConfig, runtime: Runtime) -> Path:
    run_dir = Path(config.log_dir) / config.run_name
    exists = (run_dir / "log.txt").exists() or bool(checkpoints(run_dir))
    if exists and not config.resume:
        raise UserError(f"run folder {run_dir} already holds a run; pass --resume to continue "
                        f"it, or choose another --run_name")
    if runtime.master:
        run_dir.mkdir(parents=True, exist_ok=True)
    if runtime.distributed:
        dist.barrier()  # every rank has checked the folder before rank 0 writes into it
    return run_dir


def write_header(log: RunLog, config: TrainConfig, schedule_record: dict,
                 model_config: GPTConfig, runtime: Runtime, num_params: int) -> None:
    record = dict(dataclasses.asdict(config), lr_schedule=schedule_record["name"],
                  schedule=schedule_record,
                  model_config=dataclasses.asdict(model_config), num_params=num_params,
                  world_size=runtime.world_size)
    log.comment(f"config {json.dumps(record)}")
    log.comment(f"versions {versions_line()}")
    log.comment(f"hardware {hardware_line(runtime)}")


def print_step(step, max_steps, loss, lr, norm, step_ms, tokens_per_s, mfu) -> None:
    mfu_text = f" | mfu {mfu:5.1%}" if mfu is not None else ""
    print(f"step {step:>6d}/{max_steps} | loss {loss:7.4f} | lr {lr:.2e} | norm {norm:6.3f} | "
          f"{step_ms:7.0f} ms | {tokens_per_s / 1e3:7.1f}k tok/s{mfu_text}", flush=True)


def train(config: TrainConfig, schedule, runtime: Runtime) -> None:
    grad_accum = validate(config, runtime.world_size)
    model_config = resolve_model_config(config)
    B, T = config.batch_size, config.seq_len
    if T > model_config.block_size:
        raise UserError(f"--seq_len {T} exceeds the model's block_size "
                        f"{model_config.block_size}; lower --seq_len")
    schedule_record = dict(name=schedule.name, **dataclasses.asdict(schedule))
    max_steps = schedule.max_steps
    run_dir = prepare_run_dir(config, runtime)

    stream = TrainStream(find_shards(config.data_dir, "train"), config.total_batch_size,
                         model_config.vocab_size, config.seed, config.shuffle_shards)
    val_tokens = None
    if config.val_every:
        val_tokens = load_val_tokens(config.data_dir, config.val_tokens + 1)
        if len(val_tokens) < B * T + 1:
            raise UserError(f"val shards hold {len(val_tokens)} tokens, fewer than one "
                            f"micro-batch ({B * T + 1}); make larger shards or lower "
                            f"--batch_size/--seq_len")

    torch.manual_seed(config.seed)  # same seed, same initial weights, for every schedule
    raw_model = GPT(model_config).to(runtime.device)
    optimizer = raw_model.make_optimizer(config.weight_decay, runtime.device.type)
    found = checkpoints(run_dir) if config.resume else []
    resumed_from = found[-1] if found else None
    start_step = 0
    if resumed_from:
        start_step = restore(resumed_from, raw_model, optimizer, schedule, stream, model_config,
                             schedule_record, config)

    use_compile = config.compile if config.compile is not None else runtime.device.type == "cuda"
    model = eval_model = torch.compile(raw_model) if use_compile else raw_model
    if runtime.distributed:
        device_ids = [runtime.local_rank] if runtime.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    log = RunLog(run_dir / "log.txt", runtime.master)
    write_header(log, config, schedule_record, model_config, runtime, raw_model.num_params())
    if val_tokens is not None:
        log.comment(f"validation over {(len(val_tokens) - 1) // (B * T) * B * T} tokens")
    if resumed_from:
        log.comment(f"resumed at step {start_step} from {resumed_from.name}")
    elif config.resume:
        log.comment("no checkpoint found; starting at step 0")

    evaluations = Evaluations(config, runtime, log, schedule, eval_model, raw_model, val_tokens,
                              load_hellaswag(config, model_config, runtime),
                              load_sampling_encoding(config, model_config, runtime))
    flops_per_token, peak = raw_model.flops_per_token(T), peak_flops(runtime)
    if runtime.master:
        print(f"run {run_dir} | {raw_model.num_params() / 1e6:.2f}M params | {max_steps} steps "
              f"| {config.total_batch_size} tokens/step = {runtime.world_size} ranks x "
              f"{grad_accum} accum x {B} x {T} | {schedule.name} | {hardware_line(runtime)}")

    for step in range(start_step, max_steps + 1):
        last = step == max_steps
        evaluations.run(step, last)
        if last:
            break
        started = time.perf_counter()
        lr = schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss, norm = train_step(model, optimizer, stream.next_window(), grad_accum, config,
                                runtime)
        step_ms = (time.perf_counter() - started) * 1000
        if not math.isfinite(loss):
            log.comment(f"stopped: loss {loss} at step {step}")
            raise TrainingDiverged(f"loss became {loss} at step {step}; the last good checkpoint "
                                   f"stays in {run_dir}; lower --max_lr or raise --warmup_steps")
        tokens_per_s = config.total_batch_size / (step_ms / 1000)
        log.write(f"{step} train {loss:.6f} lr {lr:.6e} norm {norm:.4f} ms {step_ms:.2f} "
                  f"tok_s {tokens_per_s:.0f}")
        if runtime.master:
            mfu = flops_per_token * tokens_per_s / (peak * runtime.world_size) if peak else None
            print_step(step, max_steps, loss, lr, norm, step_ms, tokens_per_s, mfu)
        if runtime.master and ((step + 1) % config.ckpt_every == 0 or step + 1 == max_steps):
            state = checkpoint_state(step + 1, raw_model, optimizer, schedule, schedule_record,
                                     stream, model_config, config)
            save_checkpoint(run_dir, state, step + 1, config.keep_ckpts)
    log.comment(f"finished step {max_steps}")
    log.close()


def restore(path: Path, raw_model, optimizer, schedule, stream, model_config: GPTConfig,
            schedule_record: dict, config: TrainConfig) -> int:
    """Load everything a bitwise resume needs; returns the step to continue from."""
    checkpoint = load_checkpoint(path)
    check_resumable(checkpoint, path, model_config, schedule_record, config)
    raw_model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    schedule.load_state_dict(checkpoint["schedule"]["state"])
    stream.load_state_dict(checkpoint["data"])
    set_rng_state(checkpoint["rng"])
    return checkpoint["step"]


def checkpoint_state(step, raw_model, optimizer, schedule, schedule_record, stream,
                     model_config, config) -> dict:
    return dict(step=step, model=raw_model.state_dict(), optimizer=optimizer.state_dict(),
                schedule=dict(config=schedule_record, state=schedule.state_dict()),
                data=stream.state_dict(), rng=rng_state(),
                model_config=dataclasses.asdict(model_config), config=dataclasses.asdict(config))


def train_step(model, optimizer, window: np.ndarray, grad_accum: int, config: TrainConfig,
               runtime: Runtime):
    """One optimizer step over grad_accum micro-batches; returns (mean loss, grad norm)."""
    B, T = config.batch_size, config.seq_len
    optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=runtime.device)
    for micro_step in range(grad_accum):
        x, y = micro_batch(window, micro_step * runtime.world_size + runtime.rank, B, T,
                           runtime.device)
        last_micro = micro_step == grad_accum - 1
        # Gradients are averaged across ranks once, on the last micro-batch only.
        sync = contextlib.nullcontext() if last_micro or not runtime.distributed \
            else model.no_sync()
        with sync:
            with autocast(runtime):
                _, loss = model(x, y)
            loss = loss / grad_accum
            loss.backward()
        loss_sum += loss.detach()
    if runtime.distributed:
        dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
    max_norm = config.grad_clip if config.grad_clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    return loss_sum.item(), norm.item()


@dataclass
class Evaluations:
    """What runs between optimizer steps, outside the step timer: validation loss, HellaSwag
    and samples. `model` is the compiled model without DDP's wrapper (evaluation needs no
    gradient sync, and ranks may run different numbers of batches); HellaSwag and samples use
    the uncompiled `raw_model` because their shapes change from call to call."""
    config: TrainConfig
    runtime: Runtime
    log: RunLog
    schedule: object
    model: nn.Module
    raw_model: GPT
    val_tokens: Optional[np.ndarray]
    examples: list
    encoding: object

    def due(self, every: int, step: int, last: bool) -> bool:
        return bool(every) and (step % every == 0 or last)

    def run(self, step: int, last: bool) -> None:
        """The evaluations due before train step `step`, and all of them after the last."""
        config, runtime = self.config, self.runtime
        if self.val_tokens is not None and self.due(config.val_every, step, last):
            started = time.perf_counter()
            val_loss = validation_loss(self.model, self.val_tokens, config.batch_size,
                                       config.seq_len, runtime)
            self.schedule.observe(val_loss)  # the same all-reduced value on every rank
            self.log.write(f"{step} val {val_loss:.4f}")
            self.report(step, f"val loss {val_loss:.4f}", started)
        if self.examples and self.due(config.hellaswag_every, step, last):
            started = time.perf_counter()
            accuracy = hellaswag_accuracy(self.raw_model, self.examples, runtime)
            self.log.write(f"{step} hella {accuracy:.4f}")
            self.report(step, f"hellaswag acc_norm {accuracy:.4f} over {len(self.examples)}",
                        started)
        if self.encoding and step > 0 and self.due(config.sample_every, step, last):
            for text in sample_text(self.raw_model, self.encoding, runtime, config.seed):
                print(f"sample | {text!r}", flush=True)

    def report(self, step: int, what: str, started: float) -> None:
        if self.runtime.master:
            print(f"step {step:>6d} | {what} | {time.perf_counter() - started:.1f} s",
                  flush=True)


def load_hellaswag(config: TrainConfig, model_config: GPTConfig, runtime: Runtime) -> list:
    """HellaSwag examples, or [] with one warning when they cannot be scored."""
    if not config.hellaswag_every:
        return []
    import fineweb
    import hellaswag
    try:
        if model_config.vocab_size < 50257:
            raise hellaswag.HellaSwagUnavailable(
                f"vocab_size {model_config.vocab_size} is smaller than GPT-2's 50257 tokens")
        fineweb.gpt2_encoding()  # evaluate() needs it; fail here, not at step 0
        return hellaswag.load_examples(limit=config.hellaswag_limit or None)
    except (hellaswag.HellaSwagUnavailable, fineweb.TokenizerUnavailable) as error:
        if runtime.master:
            print(f"warning: HellaSwag off for this run: {error}", file=sys.stderr)
        return []


def load_sampling_encoding(config: TrainConfig, model_config: GPTConfig, runtime: Runtime):
    """The tokenizer for samples, or None with one warning when samples cannot be made."""
    if not config.sample_every or not runtime.master:
        return None
    if model_config.vocab_size < 50257:
        print(f"warning: samples off: vocab_size {model_config.vocab_size} is smaller than "
              f"GPT-2's 50257 tokens", file=sys.stderr)
        return None
    import fineweb
    try:
        return fineweb.gpt2_encoding()
    except fineweb.TokenizerUnavailable as error:
        print(f"warning: samples off: {error}", file=sys.stderr)
        return None


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config = TrainConfig(**{f.name: getattr(args, f.name)
                            for f in dataclasses.fields(TrainConfig)})
    runtime = None
    try:
        schedule = schedulers.schedule_from_args(args)
        config.run_name = config.run_name or schedule.name
        runtime = start_runtime(config)
        train(config, schedule, runtime)
    except (UserError, schedulers.ScheduleError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
