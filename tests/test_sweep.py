"""sweep.py, run for real on a tiny model: identical starts, skipping, resuming, failures."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_script, write_shards

# 2 layers, 64 wide, 512-token vocabulary: a step takes milliseconds on a CPU.
TINY = ["--model", "d2", "--n_embd", "64", "--vocab_size", "512", "--device", "cpu",
        "--seq_len", "32", "--batch_size", "4", "--total_batch_size", "256",
        "--hellaswag_every", "0", "--sample_every", "0", "--val_tokens", "2048",
        "--max_lr", "3e-3", "--warmup_steps", "4", "--val_every", "20", "--ckpt_every", "5"]
STEPS = 24
# The first checkpoint comes at step 5; a run killed as soon as it appears is far from done.
LONG_STEPS = 80


def trainer_flags(data_dir, log_dir, steps=STEPS):
    return ["--data_dir", str(data_dir), "--log_dir", str(log_dir), *TINY,
            "--max_steps", str(steps)]


def sweep(data_dir, log_dir, *sweep_flags, steps=STEPS):
    return run_script("sweep.py", *sweep_flags, "--", *trainer_flags(data_dir, log_dir, steps))


def log_lines(run_dir) -> list:
    return (Path(run_dir) / "log.txt").read_text().splitlines()


def train_loss_at(run_dir, step: int) -> float:
    values = [float(line.split()[2]) for line in log_lines(run_dir)
              if not line.startswith("#") and line.split()[:2] == [str(step), "train"]]
    return values[-1]


def verbs(stdout: str) -> dict:
    """{run name: verb} from the sweep's one-line-per-run output."""
    found = {}
    for line in stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in ("start", "resume", "skip", "done", "FAILED"):
            found.setdefault(words[1], []).append(words[0])
    return found


@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory):
    """Two schedules, two at once with one thread each, then compare.py into report/."""
    root = tmp_path_factory.mktemp("sweep")
    data_dir = write_shards(root / "data")
    result = sweep(data_dir, root / "log", "--schedules", "constant", "cosine",
                   "--parallel", "2", "--threads", "1", "--report_dir", root / "report")
    assert result.returncode == 0, result.stdout + result.stderr
    return root, data_dir, result


def test_every_schedule_starts_from_the_same_weights_and_data(first_sweep):
    root, _, result = first_sweep
    assert verbs(result.stdout) == {"constant": ["start", "done"], "cosine": ["start", "done"]}
    constant, cosine = root / "log" / "constant", root / "log" / "cosine"
    assert train_loss_at(constant, 0) == train_loss_at(cosine, 0)
    assert f"# finished step {STEPS}" in log_lines(constant)
    assert f"# finished step {STEPS}" in log_lines(cosine)
    # Same start, different schedules: by the end the runs have parted ways.
    assert train_loss_at(constant, STEPS - 1) != train_loss_at(cosine, STEPS - 1)


def test_compare_report_holds_both_runs(first_sweep):
    root, _, result = first_sweep
    report = root / "report"
    assert (report / "compare.png").stat().st_size > 10_000
    table = (report / "table.md").read_text()
    assert "| constant " in table and "| cosine " in table
    assert "| constant " in result.stdout  # compare.py's table follows the run lines


def test_rerun_skips_finished_runs_and_writes_nothing_to_them(first_sweep):
    root, data_dir, _ = first_sweep
    before = {name: log_lines(root / "log" / name) for name in ("constant", "cosine")}
    result = sweep(data_dir, root / "log", "--schedules", "constant", "cosine",
                   "--no-compare")
    assert result.returncode == 0, result.stdout + result.stderr
    assert verbs(result.stdout) == {"constant": ["skip"], "cosine": ["skip"]}
    assert all(log_lines(root / "log" / name) == lines for name, lines in before.items())


def kill_after_first_checkpoint(data_dir, log_dir, schedule, steps) -> Path:
    """Start the trainer as the sweep would, and kill it once it has written a checkpoint."""
    run_dir = Path(log_dir) / schedule
    command = [sys.executable, str(ROOT / "train_gpt2.py"), "--lr_schedule", schedule,
               *trainer_flags(data_dir, log_dir, steps)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(run_dir.glob("ckpt_*.pt")) and process.poll() is None:
        assert time.monotonic() < deadline, "the trainer wrote no checkpoint in 120 s"
        time.sleep(0.02)
    process.kill()
    _, stderr = process.communicate()
    assert process.returncode == -9, stderr  # killed mid-run, not finished or failed
    return run_dir


def test_interrupted_run_is_resumed_from_its_checkpoint_and_finished(tmp_path, shards):
    run_dir = kill_after_first_checkpoint(shards, tmp_path / "log", "wsd", LONG_STEPS)
    assert not any(line.startswith("# finished") for line in log_lines(run_dir))
    result = sweep(shards, tmp_path / "log", "--schedules", "wsd", "--no-compare",
                   steps=LONG_STEPS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verbs(result.stdout) == {"wsd": ["resume", "done"]}
    lines = log_lines(run_dir)
    resumed = [line for line in lines if line.startswith("# resumed at step")]
    assert len(resumed) == 1 and int(resumed[0].split()[4]) > 0
    assert lines[-1] == f"# finished step {LONG_STEPS}"


def test_failed_run_is_reported_the_others_finish_and_the_exit_code_says_so(tmp_path, shards):
    broken = tmp_path / "log" / "cosine"
    broken.mkdir(parents=True)
    (broken / "ckpt_000005.pt").write_bytes(b"not a checkpoint")  # resumed, then refused
    result = sweep(shards, tmp_path / "log", "--schedules", "cosine", "constant",
                   "--parallel", "2", "--threads", "1", "--report_dir", tmp_path / "report",
                   steps=12)
    assert result.returncode == 1
    assert verbs(result.stdout) == {"cosine": ["resume", "FAILED"],
                                    "constant": ["start", "done"]}
    failed_line = next(line for line in result.stdout.splitlines() if line.startswith("FAILED"))
    assert "cannot read checkpoint" in failed_line
    assert "left out cosine" in result.stdout
    assert "| constant " in (tmp_path / "report" / "table.md").read_text()


def sweep_in_process(argv, capsys):
    """sweep.main() called directly, for the checks that start no run."""
    import sweep as sweep_module
    try:
        code = sweep_module.main([str(arg) for arg in argv])
    except SystemExit as exit:  # argparse exits by itself
        code = exit.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def dry_run_commands(stdout: str) -> dict:
    """{run name: its command line} from a --dry_run's output."""
    return {line.split()[1]: line for line in stdout.splitlines() if line.startswith("start")}


def test_gpus_are_shared_out_per_run_and_multi_process_runs_use_torchrun(tmp_path, capsys):
    code, out, err = sweep_in_process(
        ["--dry_run", "--schedules", "cosine", "wsd", "--seeds", "1", "2", "--gpus",
         "4,5,6,7", "--nproc_per_node", "2", "--", "--device", "cuda", "--log_dir",
         tmp_path], capsys)
    assert code == 0, err
    commands = dry_run_commands(out)
    assert list(commands) == ["cosine_s1", "wsd_s1", "cosine_s2", "wsd_s2"]
    assert "CUDA_VISIBLE_DEVICES=4,5 " in commands["cosine_s1"]
    assert "CUDA_VISIBLE_DEVICES=6,7 " in commands["wsd_s1"]
    assert all("torch.distributed.run --standalone --nproc_per_node=2" in command
               for command in commands.values())
    assert "--seed 2" in commands["wsd_s2"] and "--run_name wsd_s2" in commands["wsd_s2"]
    assert not list(tmp_path.iterdir())  # a dry run creates no run folder


def test_cpu_runs_at_once_split_the_cores_and_schedule_flags_reach_only_their_users(
        tmp_path, capsys):
    code, out, err = sweep_in_process(
        ["--dry_run", "--schedules", "cosine", "wsd", "--parallel", "2", "--", "--device",
         "cpu", "--decay_frac", "0.3", "--max_steps", "100", "--warmup_steps", "10",
         "--log_dir", tmp_path], capsys)
    assert code == 0, err
    commands = dry_run_commands(out)
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    assert all(f"OMP_NUM_THREADS={threads} " in command for command in commands.values())
    assert "--decay_frac 0.3" in commands["wsd"] and "--decay_frac" not in commands["cosine"]
    assert "--max_steps 100" in commands["cosine"] and "--lr_schedule cosine" in commands["cosine"]
    assert "--seed" in commands["cosine"] and "torch.distributed" not in commands["cosine"]


@pytest.mark.parametrize("argv, message", [
    (["--", "--lr_schedule", "cosine"], "--lr_schedule after `--` is set per run"),
    (["--seeds", "1", "2", "--", "--seed", "3"], "--seed after `--` is set per run"),
    (["--seed", "3"], "unknown sweep flag(s) --seed 3; train_gpt2.py flags go after `--`"),
    (["--schedules", "cosine", "cosnie"], "unknown schedule(s) cosnie"),
    (["--schedules", "cosine", "--", "--decay_frac", "0.3"], "--decay_frac is used by wsd"),
    (["--", "--max_stepz", "3"], "unrecognized arguments: --max_stepz 3"),
    (["--schedules", "wsd", "--", "--max_steps", "10"], "schedule wsd: --warmup_steps"),
    (["--parallel", "3", "--gpus", "0,1", "--", "--device", "cuda"], "need 3 GPUs"),
])
def test_bad_flags_end_in_one_error_line_and_exit_code_2(argv, message, capsys):
    code, out, err = sweep_in_process(["--dry_run", *argv], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
