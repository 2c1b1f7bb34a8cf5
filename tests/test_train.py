"""train_gpt2.py, run for real through its command line on tiny models and synthetic shards."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, run_script, write_bin_shard, write_npy_shard, write_shards

# 2 layers, 64 wide, 512-token vocabulary: a step takes milliseconds on a CPU.
TINY = ["--model", "d2", "--n_embd", "64", "--vocab_size", "512", "--device", "cpu",
        "--seq_len", "32", "--batch_size", "4", "--total_batch_size", "256",
        "--hellaswag_every", "0", "--sample_every", "0", "--val_tokens", "2048"]


def train_in_process(data_dir, log_dir, *extra, capsys):
    """main() called directly: the same code path as the command line, without a new Python."""
    import train_gpt2
    argv = ["--data_dir", data_dir, "--log_dir", log_dir, *TINY, *extra]
    try:
        code = train_gpt2.main([str(arg) for arg in argv])
    except SystemExit as exit:  # argparse exits by itself
        code = exit.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


def train(data_dir, log_dir, *extra, check=True, env=None):
    result = run_script("train_gpt2.py", "--data_dir", data_dir, "--log_dir", log_dir,
                        *TINY, *extra, env=env)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def read_events(run_dir, kind="train"):
    """{step: value} of one event kind; a later line for the same step wins, as in compare.py."""
    events = {}
    for line in (Path(run_dir) / "log.txt").read_text().splitlines():
        fields = line.split()
        if line.startswith("#") or fields[1] != kind:
            continue
        events[int(fields[0])] = float(fields[2])
    return events


def test_loss_goes_down_and_log_has_config_and_one_line_per_step(shards, tmp_path):
    result = train(shards, tmp_path / "log", "--lr_schedule", "cosine", "--max_lr", "3e-3",
                   "--warmup_steps", "5", "--max_steps", "60", "--val_every", "20")
    run_dir = tmp_path / "log" / "cosine"
    lines = (run_dir / "log.txt").read_text().splitlines()
    config = json.loads(lines[0].removeprefix("# config "))
    assert config["lr_schedule"] == "cosine" and config["schedule"]["max_steps"] == 60
    assert lines[1].startswith("# versions python") and lines[2].startswith("# hardware")
    assert lines[-1] == "# finished step 60"
    losses = read_events(run_dir)
    assert sorted(losses) == list(range(60))
    assert losses[0] > 6.0  # about ln(512) = 6.24 at initialisation
    assert np.mean([losses[s] for s in range(50, 60)]) < losses[0] - 2.0
    assert sorted(read_events(run_dir, "val")) == [0, 20, 40, 60]
    train_line = next(line for line in lines if " train " in line).split()
    assert train_line[1::2] == ["train", "lr", "norm", "ms", "tok_s"]
    step_lines = [line for line in result.stdout.splitlines() if line.startswith("step ")
                  and "loss" in line and "val" not in line]
    assert len(step_lines) == 60
    assert len({line.index("| lr") for line in step_lines}) == 1  # aligned columns
    assert sorted(p.name for p in run_dir.glob("ckpt_*.pt")) == ["ckpt_000060.pt"]


def test_same_seed_gives_same_start_for_every_schedule(shards, tmp_path, capsys):
    first_losses = []
    for schedule in ("constant", "wsd"):
        train_in_process(shards, tmp_path / "log", "--lr_schedule", schedule, "--max_steps",
                         "2", "--warmup_steps", "1", "--val_every", "0", capsys=capsys)
        first_losses.append(read_events(tmp_path / "log" / schedule)[0])
    assert first_losses[0] == first_losses[1]


def test_two_ranks_match_one_rank_with_accumulation(shards, tmp_path):
    common = ["--lr_schedule", "cosine", "--max_steps", "6", "--warmup_steps", "2",
              "--batch_size", "2", "--total_batch_size", "128", "--val_every", "3"]
    train(shards, tmp_path / "log", *common, "--run_name", "single")
    torchrun = Path(sys.executable).parent / "torchrun"
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", str(ROOT / "train_gpt2.py"),
               "--data_dir", str(shards), "--log_dir", str(tmp_path / "log"), *TINY, *common,
               "--run_name", "ddp"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    single, ddp = (tmp_path / "log" / "single", tmp_path / "log" / "ddp")
    assert json.loads((ddp / "log.txt").read_text().splitlines()[0][9:])["world_size"] == 2
    for kind in ("train", "val"):
        a, b = read_events(single, kind), read_events(ddp, kind)
        assert sorted(a) == sorted(b) and len(a) > 1
        for step in a:
            assert abs(a[step] - b[step]) < 1e-5, (kind, step, a[step], b[step])


def test_resume_after_kill_matches_uninterrupted_run(shards, tmp_path):
    steps = ["--lr_schedule", "cosine", "--max_steps", "120", "--warmup_steps", "10",
             "--val_every", "50", "--ckpt_every", "20", "--keep_ckpts", "2"]
    train(shards, tmp_path / "log", *steps, "--run_name", "whole")

    killed_dir = tmp_path / "log" / "killed"
    command = [sys.executable, str(ROOT / "train_gpt2.py"), "--data_dir", str(shards),
               "--log_dir", str(tmp_path / "log"), *TINY, *steps, "--run_name", "killed"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=dict(os.environ,
                                                                   OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while not list(killed_dir.glob("ckpt_00004*.pt")) and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    log_before = (killed_dir / "log.txt").read_text()
    assert "# finished" not in log_before

    train(shards, tmp_path / "log", *steps, "--run_name", "killed", "--resume")
    log_after = (killed_dir / "log.txt").read_text()
    assert log_after.startswith(log_before)  # appended, never truncated
    assert "# resumed at step 40 from ckpt_000040.pt" in log_after
    whole, resumed = read_events(tmp_path / "log" / "whole"), read_events(killed_dir)
    assert resumed == whole
    final_whole = torch.load(tmp_path / "log" / "whole" / "ckpt_000120.pt", weights_only=True)
    final_resumed = torch.load(killed_dir / "ckpt_000120.pt", weights_only=True)
    for name, tensor in final_whole["model"].items():
        assert torch.equal(tensor, final_resumed["model"][name]), name
    assert sorted(p.name for p in killed_dir.glob("ckpt_*")) == ["ckpt_000100.pt",
                                                                "ckpt_000120.pt"]


def test_bin_and_npy_shards_give_identical_runs(tmp_path, capsys):
    write_shards(tmp_path / "npy", fmt="npy")
    write_shards(tmp_path / "bin", fmt="bin")
    args = ["--lr_schedule", "constant", "--max_steps", "5", "--warmup_steps", "0",
            "--val_every", "5", "--data_dir"]
    for fmt in ("npy", "bin"):
        result = train_in_process(tmp_path / "npy", tmp_path / "log", *args, tmp_path / fmt,
                                  "--run_name", fmt, capsys=capsys)
        assert result.returncode == 0, result.stderr
    for kind in ("train", "val"):
        assert read_events(tmp_path / "log" / "npy", kind) == \
            read_events(tmp_path / "log" / "bin", kind)


def test_from_pretrained_matches_transformers_logits(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel
    from train_gpt2 import GPT
    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(GPT2Config(n_positions=64, n_embd=48, n_layer=2, n_head=4,
                                          vocab_size=300)).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    model = GPT.from_pretrained(str(tmp_path / "hf")).eval()
    idx = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf_model(idx).logits
    assert ours.shape == theirs.shape == (2, 40, 300)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=1e-5)


def make_bad_data(tmp_path, problem):
    data_dir = tmp_path / "bad"
    data_dir.mkdir()
    tokens = np.arange(5000) % 512
    if problem == "wrong dtype":
        np.save(data_dir / "x_train_000001.npy", tokens.astype(np.int32))
    elif problem == "truncated bin":
        write_bin_shard(data_dir / "x_train_000001.bin", tokens)
        with open(data_dir / "x_train_000001.bin", "r+b") as f:
            f.truncate(2000)
    elif problem == "token beyond vocab":
        write_npy_shard(data_dir / "x_train_000001.npy", tokens + 600)
    return data_dir


@pytest.mark.parametrize("problem, expected", [
    ("missing dir", "does not exist; run `python fineweb.py`"),
    ("empty dir", "no train shards"),
    ("wrong dtype", "expected 1-D uint16 tokens"),
    ("truncated bin", "is truncated"),
    ("token beyond vocab", ">= vocab_size 512; raise --vocab_size"),
])
def test_bad_data_gives_one_clear_line(tmp_path, capsys, problem, expected):
    data_dir = tmp_path / "missing" if problem == "missing dir" else make_bad_data(tmp_path,
                                                                                    problem)
    result = train_in_process(data_dir, tmp_path / "log", "--max_steps", "2", "--warmup_steps",
                              "0", "--val_every", "0", capsys=capsys)
    assert_one_line_error(result, expected)


@pytest.mark.parametrize("flags, expected", [
    (["--total_batch_size", "1000"], "is not divisible by batch_size x seq_len x ranks"),
    (["--model", "gpt5"], "unknown --model 'gpt5'"),
    (["--seq_len", "2048", "--total_batch_size", "8192"], "exceeds the model's block_size"),
    (["--batch_size", "abc"], "argument --batch_size: invalid int value"),
    (["--lr_schedule", "cosin"], "cosine"),
    (["--dtype", "float8"], "--dtype 'float8'"),
])
def test_bad_flags_give_one_clear_line(shards, tmp_path, capsys, flags, expected):
    result = train_in_process(shards, tmp_path / "log", "--max_steps", "2", "--warmup_steps",
                              "0", *flags, capsys=capsys)
    assert_one_line_error(result, expected)


def test_existing_run_and_mismatched_checkpoint_are_refused(shards, tmp_path, capsys):
    args = ["--lr_schedule", "constant", "--max_steps", "2", "--warmup_steps", "0",
            "--val_every", "0"]

    def run(*extra):
        return train_in_process(shards, tmp_path / "log", *args, *extra, capsys=capsys)
    assert run().returncode == 0
    log_before = (tmp_path / "log" / "constant" / "log.txt").read_text()
    assert_one_line_error(run(), "already holds a run; pass --resume")
    assert_one_line_error(run("--resume", "--n_embd", "128"), "belongs to another run: model")
    assert_one_line_error(run("--resume", "--max_steps", "3"),
                          "belongs to another run: schedule")
    assert (tmp_path / "log" / "constant" / "log.txt").read_text().startswith(log_before)


def test_non_finite_loss_stops_run_and_keeps_last_checkpoint(shards, tmp_path, capsys):
    result = train_in_process(shards, tmp_path / "log", "--lr_schedule", "constant",
                              "--max_lr", "1e6", "--warmup_steps", "0", "--max_steps", "50",
                              "--grad_clip", "0", "--ckpt_every", "1", "--val_every", "0",
                              capsys=capsys)
    assert result.returncode == 3, result.stderr
    assert result.stderr.count("\n") == 1 and "loss became nan" in result.stderr
    run_dir = tmp_path / "log" / "constant"
    assert "# stopped: loss nan" in (run_dir / "log.txt").read_text()
    last = torch.load(sorted(run_dir.glob("ckpt_*.pt"))[-1], weights_only=True)
    assert all(torch.isfinite(t).all() for t in last["model"].values())


def test_compiled_training_evaluates_and_samples(shards, tmp_path):
    # A real vocabulary so that sampling (which needs GPT-2's tokenizer) runs while compiled.
    write_shards(tmp_path / "wide", vocab_size=50257, tokens_per_shard=5000, train_shards=1)
    cache = tmp_path / "inductor"
    result = run_script("train_gpt2.py", "--data_dir", tmp_path / "wide", "--log_dir",
                        tmp_path / "log", "--model", "d2", "--n_embd", "32", "--device", "cpu",
                        "--seq_len", "16", "--batch_size", "2", "--total_batch_size", "32",
                        "--val_tokens", "64", "--val_every", "2", "--sample_every", "2",
                        "--hellaswag_every", "0", "--max_steps", "2", "--warmup_steps", "0",
                        "--compile", env=dict(TORCHINDUCTOR_CACHE_DIR=str(cache)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(read_events(tmp_path / "log" / "cosine", "val")) == [0, 2]
    samples = [line for line in result.stdout.splitlines() if line.startswith("sample |")]
    assert len(samples) == 4 and all("language model," in s for s in samples)


def assert_one_line_error(result, expected):
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]
