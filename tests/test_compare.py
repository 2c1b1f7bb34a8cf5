"""compare.py on logs written by hand, whose every table value is worked out below."""
import contextlib
import csv
import json
import math

import numpy as np
import pytest

import compare
from conftest import run_script

# Flags every end-to-end test passes, so the expected values can be worked out by hand:
# alpha 0.5 keeps the smoothed losses exact binary fractions.
FLAGS = ["--ema_alpha", "0.5", "--spike_window", "4", "--spike_k", "2", "--target_loss", "3.0",
         "--tokens_per_step", "100"]


def config_line(**fields) -> str:
    config = dict(model="d2", seed=1, lr_schedule="cosine", schedule={"max_lr": 1e-3},
                  total_batch_size=1000, log_dir="log", resume=False, ckpt_every=5000)
    config.update(fields)
    return "# config " + json.dumps(config) + "\n"


def train_line(step, loss, lr=1e-3, norm=1.0, tok_s=1000.0) -> str:
    return f"{step} train {loss:.6f} lr {lr:.6e} norm {norm:.4f} ms 1.00 tok_s {tok_s:.0f}\n"


def write_run(root, name, text, log="log.txt"):
    folder = root / name
    folder.mkdir(parents=True)
    (folder / log).write_text(text)
    return folder


COSINE_S1_LOSS = [6.0, 4.0, 3.0, 3.5, 2.5, 2.75, 2.25, 2.0]
COSINE_S1_NORM = [1.5, 1.2, 0.9, 2.5, 0.8, 0.7, 0.6, 0.5]
COSINE_S1_TOK_S = [100, 900, 1000, 1100, 1000, 950, 1050, 1000]
SPIKY_LOSS = [3.0, 3.2, 3.0, 3.2, 4.0, 3.0, 3.2, 3.0, 3.2, 5.0, 3.6, 3.4]
RANGE_LR = [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
RANGE_LOSS = [6.0, 5.0, 4.0, 3.0, 5.0, 9.0]


def write_cosine_s1(root):
    lines = [config_line(seed=1, run_name="cosine_s1"), "# versions python 3.11\n",
             "0 val 6.1000\n"]
    for step, (loss, norm, tok_s) in enumerate(zip(COSINE_S1_LOSS, COSINE_S1_NORM,
                                                   COSINE_S1_TOK_S)):
        if step == 4:
            lines += ["4 val 2.8000\n", "4 hella 0.2500\n"]
        lines.append(train_line(step, loss, norm=norm, tok_s=tok_s))
    lines += ["8 val 2.9000\n", "8 hella 0.3000\n", "# finished step 8\n"]
    write_run(root, "cosine_s1", "".join(lines))


def write_cosine_s2(root):
    # Same config but the seed (and the keys that only name or place a run): same group.
    losses = [6.0, 4.0, 3.0, 3.5, 2.5, 2.75, 2.25, 2.2]
    text = config_line(seed=2, run_name="cosine_s2", resume=True)
    text += "".join(train_line(step, loss) for step, loss in enumerate(losses))
    write_run(root, "cosine_s2", text + "8 val 3.1000\n")


def write_linear_resumed(root):
    # The first attempt logged to step 9 (and a val at 5); the checkpoint it resumes from is
    # step 3's, and the second attempt stopped at 7: steps 8, 9 and the val at 5 are stale.
    first = [config_line(lr_schedule="linear", run_name="linear"), "0 val 6.0000\n"]
    first += [train_line(step, 9.0) for step in range(10)] + ["5 val 9.9000\n"]
    second = [config_line(lr_schedule="linear", run_name="linear", resume=True),
              "# resumed at step 3 from ckpt_000003.pt\n"]
    second += [train_line(step, loss) for step, loss in zip(range(3, 8),
                                                            [3.0, 2.8, 2.6, 2.4, 2.3])]
    second += ["8 val 2.6000\n", "# finished step 8\n"]
    write_run(root, "linear", "".join(first + second))


def write_logs(root):
    """Eight runs: ours (two seeds, a resume, spikes, a range test), build-nanogpt, llm.c."""
    write_cosine_s1(root)
    write_cosine_s2(root)
    write_linear_resumed(root)
    wsd = config_line(lr_schedule="wsd", run_name="wsd")
    write_run(root, "wsd", wsd + "".join(train_line(s, x) for s, x in
                                         enumerate([5.0, 4.0, 3.0, 2.5])))
    spiky = config_line(lr_schedule="constant", run_name="spiky")
    write_run(root, "spiky", spiky + "".join(train_line(s, x) for s, x in
                                             enumerate(SPIKY_LOSS)))
    range_test = config_line(lr_schedule="range_test", run_name="range")
    write_run(root, "range", range_test + "".join(
        train_line(s, x, lr=lr) for s, (x, lr) in enumerate(zip(RANGE_LOSS, RANGE_LR))))
    write_run(root, "bn", "0 val 4.1000\n0 hella 0.2400\n0 train 4.000000\n1 train 3.000000\n"
                          "2 val 3.0000\n2 train 2.500000\n3 val 3.2000\n3 hella 0.2700\n"
                          "3 train 3.000000\n")
    # llm.c appends on resume: step 2 appears twice and the later line counts.
    write_run(root, "llmc", "s:0 tel:5.1000\ns:0 trl:5.0000 lr:0.000600 norm:1.00\n"
                            "s:1 trl:4.5000 lr:0.000600 norm:3.00\n"
                            "s:2 trl:9.9000 lr:0.000600 norm:9.00\n"
                            "s:2 trl:4.0000 lr:0.000600 norm:0.50\n"
                            "s:3 trl:4.0000 lr:0.000600 norm:0.50\n"
                            "s:4 tel:4.2000\ns:4 eval:0.2600\n", log="main.log")
    return root


def read_csv(path) -> dict:
    with open(path, newline="") as f:
        return {row[next(iter(row))]: row for row in csv.DictReader(f)}


def assert_row(row: dict, expected: dict):
    """Every column of a CSV row: text columns equal, numbers equal to 1e-9."""
    assert set(row) == set(expected)
    for key, value in expected.items():
        if isinstance(value, float):
            assert float(row[key]) == pytest.approx(value, abs=1e-9), key
        else:
            assert row[key] == str(value), key


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """compare.py run once on all the hand-written logs: (stdout, output folder)."""
    root = tmp_path_factory.mktemp("compare")
    write_logs(root / "log")
    out = root / "report"
    capture = tmp_path_factory.mktemp("stdout") / "stdout.txt"
    with open(capture, "w") as f, contextlib.redirect_stdout(f):
        assert compare.main([str(root / "log"), "-o", str(out), *FLAGS]) == 0
    return capture.read_text(), out


# ----------------------------------------------------------------------------------------------
# Every column, end to end

def test_our_run_has_every_column_worked_out_by_hand(report):
    rows = read_csv(report[1] / "runs.csv")
    # smoothed (alpha 0.5): 6, 5, 4, 3.75, 3.125, 2.9375, 2.59375, 2.296875
    assert_row(rows["cosine_s1"], dict(
        run="cosine_s1", source="ours", seed="1", group="cosine_s*", steps="8", tokens="8000",
        final_train_loss=2.0,  # the last ceil(8/20) = 1 loss
        final_val_loss=2.9, best_val_loss=2.8,
        target_step="5", target_tokens="5000",  # smoothed 2.9375 <= 3.0 first at step 5
        # trapezoids over step/7: (5 + 3.5 + 3.25 + 3 + 2.625 + 2.5 + 2.125) / 7
        loss_area=22 / 7,
        spikes="0", largest_spike=0.0,
        # second half 2.5, 2.75, 2.25, 2.0: changes .25, -.5, -.25, variance 7/72
        change_std=math.sqrt(7 / 72),
        max_grad_norm=2.5, median_tokens_per_second=1000.0, hellaswag=0.3,
        # (s_6 - s_7) / (s_0 - s_7) = (19/64) / (237/64)
        late_drop_share=19 / 237, undertrained="yes", suggested_max_lr="", rank="1 ~2"))


def test_build_nanogpt_log_reads_with_the_given_tokens_per_step(report):
    rows = read_csv(report[1] / "runs.csv")
    # losses 4, 3, 2.5, 3; smoothed 4, 3.5, 3.0, 3.0
    assert_row(rows["bn"], dict(
        run="bn", source="build-nanogpt", seed="", group="bn", steps="4", tokens="400",
        final_train_loss=3.0, final_val_loss=3.2, best_val_loss=3.0,
        target_step="2", target_tokens="200",
        loss_area=3.0,  # (3.5 + 2.75 + 2.75) / 3
        spikes="0", largest_spike=0.0,  # 4 losses: none has a full window before it
        change_std=0.0,  # one change in the second half (2.5 -> 3)
        max_grad_norm="", median_tokens_per_second="", hellaswag=0.27,
        late_drop_share=0.0, undertrained="no", suggested_max_lr="", rank="4"))


def test_llmc_log_reads_and_a_repeated_step_keeps_its_later_line(report):
    rows = read_csv(report[1] / "runs.csv")
    # losses 5, 4.5, 4, 4 (step 2's 9.9 was replaced); smoothed 5, 4.75, 4.375, 4.1875
    assert_row(rows["llmc"], dict(
        run="llmc", source="llm.c", seed="", group="llmc", steps="4", tokens="400",
        final_train_loss=4.0, final_val_loss=4.2, best_val_loss=4.2,
        target_step="", target_tokens="",  # never reaches 3.0
        loss_area=13 / 3,  # (4.75 + 4.25 + 4) / 3
        spikes="0", largest_spike=0.0, change_std=0.0,
        max_grad_norm=3.0,  # the replaced line's 9.0 is gone
        median_tokens_per_second="", hellaswag=0.26,
        late_drop_share=3 / 13,  # (4.375 - 4.1875) / (5 - 4.1875)
        undertrained="yes", suggested_max_lr="", rank="6"))


def test_resumed_run_keeps_the_second_attempt_and_drops_the_stale_tail(report):
    row = read_csv(report[1] / "runs.csv")["linear"]
    assert row["steps"] == "8"  # not 10: the first attempt's steps 8 and 9 are gone
    assert float(row["final_train_loss"]) == pytest.approx(2.3)
    assert float(row["final_val_loss"]) == pytest.approx(2.6)
    assert float(row["best_val_loss"]) == pytest.approx(2.6)  # the stale 5 val was dropped
    # losses 9, 9, 9, 3, 2.8, 2.6, 2.4, 2.3; smoothed 9, 9, 9, 6, 4.4, 3.5, 2.95
    assert row["target_step"] == "6"


def test_spikes_count_events_above_the_running_mean(report):
    row = read_csv(report[1] / "runs.csv")["spiky"]
    # 4.0 after 3.0, 3.2, 3.0, 3.2 (mean 3.1, std 0.1) and 5.0 after the same four
    assert row["spikes"] == "2"
    assert float(row["largest_spike"]) == pytest.approx(1.9)
    # second half 3.2, 3.0, 3.2, 5.0, 3.6, 3.4: changes -.2, .2, 1.8, -1.4, -.2
    assert float(row["change_std"]) == pytest.approx(math.sqrt(1.0624))
    assert row["rank"] == "5"


def test_range_test_suggests_a_tenth_of_the_lr_at_the_lowest_smoothed_loss(report):
    row = read_csv(report[1] / "runs.csv")["range"]
    # smoothed 6, 5.5, 4.75, 3.875, 4.4375, 6.71875: lowest at LR 1e-2
    assert float(row["suggested_max_lr"]) == pytest.approx(1e-3)
    assert row["rank"] == "range test"


def test_seeds_of_one_config_are_grouped_with_mean_and_std(report):
    groups = read_csv(report[1] / "groups.csv")
    assert list(groups) == ["bn", "cosine_s*", "linear", "llmc", "range", "spiky", "wsd"]
    cosine = groups["cosine_s*"]
    assert (cosine["runs"], cosine["seeds"], cosine["undertrained"]) == ("2", "1 2", "2")
    assert float(cosine["final_train_loss"]) == pytest.approx(2.1)
    assert float(cosine["final_train_loss_std"]) == pytest.approx(0.1 * math.sqrt(2))
    assert float(cosine["final_val_loss"]) == pytest.approx(3.0)
    assert float(cosine["final_val_loss_std"]) == pytest.approx(0.1 * math.sqrt(2))
    assert float(cosine["noise"]) == pytest.approx(0.1 * math.sqrt(2))
    assert groups["wsd"]["final_train_loss_std"] == ""  # one run: no std
    # one-run groups borrow the seed noise measured on the cosine pair
    assert float(groups["wsd"]["noise"]) == pytest.approx(0.1 * math.sqrt(2))


def test_ranking_says_which_differences_exceed_the_seed_noise(report):
    groups = read_csv(report[1] / "groups.csv")
    # means 2.1, 2.3, 2.5, 3.0, 3.4, 4.0; within the noise when apart by <= 2 * 0.1414
    ranks = {name: row["rank"] for name, row in groups.items()}
    assert ranks == {"cosine_s*": "1 ~2", "linear": "2 ~1,3", "wsd": "3 ~2", "bn": "4",
                     "spiky": "5", "llmc": "6", "range": "range test"}


def test_markdown_table_is_printed_and_written(report):
    stdout, out = report
    written = (out / "table.md").read_text()
    assert stdout.split("\nwrote ")[0].strip() in written
    assert "steps to target" in written and "loss area" in written  # the definitions follow
    rows = [line for line in stdout.splitlines() if line.startswith("| cosine_s1 ")]
    cells = [text.strip() for text in rows[0].strip("|").split("|")]
    assert cells == ["cosine_s1", "ours", "1", "cosine_s*", "8", "8.00k", "2.0000", "2.9000",
                     "2.8000", "5", "5.00k", "3.1429", "0", "0.0000", "0.3118", "2.500", "1000",
                     "0.3000", "8.0%", "yes", "-", "1 ~2"]
    group_rows = [line for line in stdout.splitlines() if line.startswith("| cosine_s* ")]
    assert "| 2.1000 ± 0.1414 |" in group_rows[-1]


def test_figure_is_a_png_written_without_leftovers(report):
    out = report[1]
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["compare.png", "groups.csv", "runs.csv",
                                                     "table.md"]


def test_cli_defaults_target_to_the_worst_final_smoothed_loss_and_draws_tokens(tmp_path):
    write_cosine_s1(tmp_path / "log")
    write_run(tmp_path / "log", "range", config_line(lr_schedule="range_test") + "".join(
        train_line(s, x, lr=lr) for s, (x, lr) in enumerate(zip(RANGE_LOSS, RANGE_LR))))
    result = run_script("compare.py", "log", "--ema_alpha", "0.5", "--x", "tokens",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # the range test's 6.71875 is left out: the target is cosine_s1's final 2.296875
    assert "target loss 2.2969 (the highest final smoothed train loss)" in result.stdout
    assert read_csv(tmp_path / "report" / "runs.csv")["cosine_s1"]["target_step"] == "7"
    assert (tmp_path / "report" / "compare.png").read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2

def bad_line_log(root):
    write_run(root, "run", config_line() + "0 train 5.0\n1 trian\n")


def no_steps_log(root):
    write_run(root, "run", config_line() + "0 val 5.0\n")


def bad_config_log(root):
    write_run(root, "run", "# config {not json\n0 train 5.0\n")


def binary_log(root):
    (write_run(root, "run", "") / "log.txt").write_bytes(b"\xff\xfe\x00 train")


def out_dir_is_a_file(root):
    write_run(root, "run", config_line() + "0 train 5.0\n")
    (root.parent / "taken").write_text("")


@pytest.mark.parametrize("make_logs, args, message", [
    (lambda root: root.mkdir(), ["log"], "no runs found under log"),
    (lambda root: None, ["missing"], "missing is not a folder"),
    (bad_line_log, ["log"], "line 3 is not a log line: '1 trian'"),
    (no_steps_log, ["log"], "has no train steps"),
    (bad_config_log, ["log"], "the config line is not JSON"),
    (binary_log, ["log"], "cannot read"),
    (out_dir_is_a_file, ["log", "-o", "taken"], "cannot write to taken"),
    (lambda root: None, ["log", "--ema_alpha", "0"], "argument --ema_alpha: 0 is not in (0"),
    (lambda root: None, ["log", "--x", "time"], "argument --x: invalid choice"),
])
def test_bad_input_gives_one_error_line_and_exit_code_2(tmp_path, make_logs, args, message):
    make_logs(tmp_path / "log")
    result = run_script("compare.py", *args, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------------------------
# The metric functions alone

def test_tail_counts_round_up_and_never_reach_zero():
    assert [compare.tail_count(n, 5) for n in (1, 20, 21, 40, 41)] == [1, 1, 2, 2, 3]
    assert [compare.tail_count(n, 10) for n in (1, 10, 11)] == [1, 1, 2]
    assert compare.final_train_loss(np.arange(21.0)) == 19.5  # the last 2 of 21


def test_ema_starts_at_the_first_value():
    assert compare.ema(np.array([8.0, 4.0, 4.0, 6.0]), 0.5).tolist() == [8.0, 6.0, 5.0, 5.5]


def test_loss_area_weights_by_step_when_steps_are_uneven():
    # x = 0, 1/3, 1: 3 * 1/3 + 2 * 2/3
    assert compare.loss_area(np.array([0, 1, 3]), np.array([4.0, 2.0, 2.0])) == \
        pytest.approx(7 / 3)
    assert compare.loss_area(np.array([5]), np.array([3.5])) == 3.5


def test_consecutive_spiky_points_are_one_spike():
    # 5: mean 1.5, std .5 -> excess 3.5; 7: mean 2.5, std 1.5 -> excess 4.5; 1: below
    losses = np.array([1.0, 2.0, 1.0, 2.0, 5.0, 7.0, 1.0])
    assert compare.spike_stats(losses, window=4, k=1.0) == (1, 4.5)


def test_late_drop_share_is_empty_when_the_loss_never_fell():
    assert compare.late_drop_share(np.array([3.0, 3.5, 4.0])) is None
    assert compare.late_drop_share(np.array([3.0])) is None
    assert compare.change_std(np.array([3.0, 2.0])) is None


def test_noise_comes_from_seeds_then_pooled_seeds_then_the_run_tail():
    # groups: two seeds (std sqrt(.02)), three seeds (std .1), one run
    noise = compare.seed_noise([[2.0, 2.2], [1.0, 1.1, 1.2], [3.0]], [9.0, 9.0, 0.5])
    assert noise == pytest.approx([math.sqrt(0.02), 0.1, math.sqrt((0.02 + 0.01) / 2)])
    assert compare.seed_noise([[3.0], [4.0]], [0.5, 0.25]) == [0.5, 0.25]


def test_rank_labels_list_the_ranks_within_the_noise():
    labels = compare.rank_labels([3.0, 1.0, 1.1, 2.0], [0.1, 0.1, 0.01, 0.47], factor=2.0)
    # sorted 1.0, 1.1, 2.0, 3.0; 2.0 is within 2 * 0.47 of 1.1 (0.9) but not of 1.0 or 3.0
    assert labels == ["4", "1 ~2", "2 ~1,3", "3 ~2"]


def test_min_loss_lr_ignores_steps_without_an_lr():
    lrs = np.array([np.nan, 1e-4, 1e-3, 1e-2])
    assert compare.min_loss_lr(lrs, np.array([1.0, 5.0, 4.0, 4.5])) == 1e-3
    assert compare.min_loss_lr(np.array([np.nan]), np.array([1.0])) is None


def test_twelve_runs_get_distinct_lines_and_seeds_share_a_colour():
    styles = compare.run_styles([[i] for i in range(11)] + [[11, 12]], 13)
    assert len(set(styles[:12])) == 12
    assert styles[11][0] == styles[12][0] and styles[11][1] != styles[12][1]


def test_runs_with_the_same_folder_name_are_named_by_their_path(tmp_path):
    folders = [tmp_path / "a" / "cosine", tmp_path / "b" / "cosine", tmp_path / "b" / "wsd"]
    assert compare.run_names(folders) == ["a/cosine", "b/cosine", "b/wsd"]


def test_nan_losses_of_a_diverged_run_are_left_out_with_a_note(tmp_path, capsys):
    write_run(tmp_path, "diverged", "0 train 5.0\n1 train nan\n2 train 4.0\n2 val inf\n")
    [run] = compare.load_runs([tmp_path], compare.DEFAULT_TOKENS_PER_STEP)
    assert run.steps.tolist() == [0, 2] and run.loss.tolist() == [5.0, 4.0]
    assert len(run.val_steps) == 0
    assert "has 2 nan/inf values (first on line 2)" in capsys.readouterr().err
