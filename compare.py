"""Compare training runs: one figure and one table from their logs.

    python compare.py log/                                  # every run under log/
    python compare.py log/cosine log/wsd --target_loss 3.5 -o report/

A run is a folder holding log.txt (ours, or build-nanogpt's) or main.log (llm.c's). Writes
compare.png, table.md, runs.csv and groups.csv into --out_dir and prints the tables.
"""
import argparse
import csv
import io
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LOG_NAMES = ("log.txt", "main.log")  # a folder holding either one is a run
DEFAULT_TOKENS_PER_STEP = 524288  # 2**19, build-nanogpt's and llm.c's GPT-2 (124M) batch
# Config keys that name, place or checkpoint a run without changing what it learns: runs whose
# configs differ only in these are seeds of one experiment.
RUN_IDENTITY_KEYS = ("seed", "run_name", "log_dir", "resume", "ckpt_every", "keep_ckpts",
                     "sample_every")

DEFINITIONS = """\
definitions (n = number of logged train losses x_0..x_{n-1}, in step order):
  smoothed loss   s_0 = x_0, s_i = a*x_i + (1-a)*s_{i-1}, a = --ema_alpha (trailing EMA)
  final train     mean of the last ceil(n/20) train losses (the last 5%)
  final/best val  val loss at the highest logged step / lowest logged val loss
  steps to target first logged step whose smoothed loss <= the target loss; tokens to target
                  = that step * tokens per step (trained on before it). Target: --target_loss,
                  default the highest final smoothed loss among the runs (range tests aside)
  loss area       trapezoid integral of the train loss over the run fraction
                  (step - first step) / (last step - first step): the step-weighted mean loss
  spikes          x_i is spiky when x_i - m > k*d, with m and d the mean and (population) std
                  of the --spike_window losses before it and k = --spike_k; consecutive spiky
                  points are one spike. largest spike: the largest x_i - m among them, else 0
  change std      population std of x_{i+1} - x_i over the points from index floor(n/2) on
  max norm, tok/s the largest logged gradient norm; the median logged tokens per second
  hellaswag       the accuracy logged at the highest step
  last-10% drop   (s_{n-1-m} - s_{n-1}) / (s_0 - s_{n-1}), m = min(ceil(n/10), n-1): the share
                  of the run's smoothed improvement made in its last 10%; undertrained when
                  above --undertrained_share (empty, not undertrained, if the loss never fell)
  groups          runs whose config JSON is equal without seed, run_name, log_dir, resume,
                  ckpt_every, keep_ckpts, sample_every (build-nanogpt and llm.c runs stand
                  alone); mean +- sample std (ddof 1) over the runs that have the value
  noise           of a group: sample std of its final train losses if it has 2+ runs; else
                  the root mean square of those stds over the groups that have 2+ runs; else
                  the population std of its run's last-5% train losses
  rank            groups sorted by mean final train loss, 1 = lowest (range tests aside); two
                  differ beyond noise when |mean_a - mean_b| > --noise_factor * max(noise);
                  "3 ~2,4" = third, within the noise of the second and the fourth
  range test      suggested max_lr = LR at the lowest smoothed loss / --range_divisor
"""


class CompareError(Exception):
    """A problem with the user's input; the message is one line: the problem; the fix."""


# ----------------------------------------------------------------------------------------------
# Reading the logs

@dataclass
class Run:
    name: str
    source: str  # "ours", "build-nanogpt" or "llm.c"
    config: dict  # our log's "# config" JSON, {} for the other formats
    tokens_per_step: int
    steps: np.ndarray  # (n,) optimizer steps that have a train line, ascending
    loss: np.ndarray  # (n,) train loss at those steps
    lr: np.ndarray  # (n,) learning rate, nan where the log has none
    norm: np.ndarray  # (n,) gradient norm, nan where the log has none
    tokens_per_second: np.ndarray  # (n,) nan where the log has none
    val_steps: np.ndarray
    val_loss: np.ndarray
    hella_steps: np.ndarray
    hella_acc: np.ndarray

    @property
    def is_range_test(self) -> bool:
        return self.config.get("lr_schedule") == "range_test"


@dataclass
class Records:
    """A log's lines keyed by step, so that a repeated step keeps its later line."""
    train: dict
    val: dict
    hella: dict
    config: dict

    def forget_after_resume(self, start_step: int) -> None:
        # The abandoned attempt may have logged further than its checkpoint; the resumed one
        # reruns train steps from start_step and may or may not repeat the eval at start_step.
        self.train = {s: v for s, v in self.train.items() if s < start_step}
        self.val = {s: v for s, v in self.val.items() if s <= start_step}
        self.hella = {s: v for s, v in self.hella.items() if s <= start_step}


def parse_our_line(text: str) -> tuple:
    """`<step> <kind> <value> [<key> <value>]...` -> (kind, step, {name: float})."""
    words = text.split()
    if len(words) < 3 or len(words) % 2 == 0:
        raise ValueError("expected <step> <kind> <value> [<key> <value>]...")
    step, kind, value = int(words[0]), words[1], float(words[2])
    fields = {key: float(number) for key, number in zip(words[3::2], words[4::2])}
    return kind, step, dict(fields, value=value)


def parse_llmc_line(text: str) -> list:
    """`s:<step> trl:<loss> lr:<lr> norm:<norm>`, `s:<step> tel:<loss>`, `s:<step> eval:<acc>`."""
    pairs = dict(word.split(":", 1) for word in text.replace(": ", ":").split())
    step = int(pairs["s"])
    events = []
    if "trl" in pairs:
        extras = {key: float(pairs[key]) for key in ("lr", "norm") if key in pairs}
        events.append(("train", step, dict(extras, value=float(pairs["trl"]))))
    if "tel" in pairs:
        events.append(("val", step, {"value": float(pairs["tel"])}))
    if "eval" in pairs:
        events.append(("hella", step, {"value": float(pairs["eval"])}))
    return events


def read_comment(text: str, records: Records, where: str) -> None:
    if text.startswith("# config "):
        try:
            # A resumed run writes its header again; the last one describes the run as it ended.
            records.config = json.loads(text[len("# config "):])
        except json.JSONDecodeError as error:
            raise CompareError(f"{where}: the config line is not JSON ({error.msg}); fix or "
                               f"delete that line") from None
        if not isinstance(records.config, dict):
            raise CompareError(f"{where}: the config line is not a JSON object; fix or delete "
                               f"that line")
    resumed = re.match(r"# resumed at step (\d+)", text)
    if resumed:
        records.forget_after_resume(int(resumed.group(1)))


def read_records(path: Path) -> Records:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise CompareError(f"cannot read {path} ({reason}); check the file's permissions and "
                           f"that it is a text log") from None
    records = Records(train={}, val={}, hella={}, config={})
    is_llmc = path.name == "main.log"
    skipped = []  # line numbers of non-finite values
    for number, line in enumerate(lines, 1):
        text = line.strip()
        where = f"{path} line {number}"
        if not text:
            continue
        if text.startswith("#"):
            read_comment(text, records, where)
            continue
        try:
            events = parse_llmc_line(text) if is_llmc else [parse_our_line(text)]
        except (ValueError, KeyError):
            raise CompareError(f"{where} is not a log line: {text[:60]!r}; fix or delete that "
                               f"line") from None
        for kind, step, fields in events:
            if kind not in ("train", "val", "hella"):  # other kinds are for other readers
                continue
            if math.isfinite(fields["value"]):
                getattr(records, kind)[step] = fields
            else:  # a diverged run; its finite steps can still be compared
                skipped.append(number)
    if skipped:
        print(f"note: {path} has {len(skipped)} nan/inf values (first on line {skipped[0]}); "
              f"they are left out", file=sys.stderr)
    return records


def source_of(path: Path, records: Records) -> str:
    if path.name == "main.log":
        return "llm.c"
    return "ours" if records.config else "build-nanogpt"


def column(entries: list, key: str) -> np.ndarray:
    return np.array([fields.get(key, np.nan) for fields in entries], dtype=float)


def run_from_records(name: str, path: Path, records: Records, tokens_per_step: int) -> Run:
    if not records.train:
        raise CompareError(f"{path} has no train steps; let the run log a step or leave its "
                           f"folder out")
    steps = sorted(records.train)
    entries = [records.train[step] for step in steps]
    val_steps, hella_steps = sorted(records.val), sorted(records.hella)
    return Run(name=name, source=source_of(path, records),
               config=records.config, tokens_per_step=tokens_per_step,
               steps=np.array(steps), loss=column(entries, "value"), lr=column(entries, "lr"),
               norm=column(entries, "norm"), tokens_per_second=column(entries, "tok_s"),
               val_steps=np.array(val_steps, dtype=int),
               val_loss=np.array([records.val[s]["value"] for s in val_steps], dtype=float),
               hella_steps=np.array(hella_steps, dtype=int),
               hella_acc=np.array([records.hella[s]["value"] for s in hella_steps], dtype=float))


def find_run_logs(paths: list) -> list:
    """The log of every run folder at or under the given paths, in path order, once each."""
    logs = []
    for path in paths:
        if path.is_file() and path.name in LOG_NAMES:
            path = path.parent
        elif not path.is_dir():
            raise CompareError(f"{path} is not a folder; pass run folders or a folder of runs "
                               f"such as log/")
        for folder, _, files in sorted(os.walk(path)):
            names = [name for name in LOG_NAMES if name in files]
            if names:  # log.txt wins over a main.log beside it
                logs.append(Path(folder) / names[0])
    unique = list({log.resolve(): log for log in logs}.values())
    if not unique:
        shown = " ".join(str(path) for path in paths)
        raise CompareError(f"no runs found under {shown} (no folder holds log.txt or "
                           f"main.log); pass the log/ folder or a run folder")
    return unique


def run_names(folders: list) -> list:
    """Folder names, or paths from the folders' common parent when two names are the same."""
    names = [folder.name for folder in folders]
    if len(set(names)) == len(names):
        return names
    root = Path(os.path.commonpath([folder.resolve() for folder in folders]))
    paths = [folder.resolve().relative_to(root).as_posix() for folder in folders]
    return [folder.name if path == "." else path for folder, path in zip(folders, paths)]


def tokens_per_step_of(records: Records, default: int) -> int:
    batch = records.config.get("total_batch_size")
    return batch if isinstance(batch, int) and batch > 0 else default


def load_runs(paths: list, default_tokens_per_step: int) -> list:
    logs = find_run_logs(paths)
    runs = []
    for path, name in zip(logs, run_names([log.parent for log in logs])):
        records = read_records(path)
        tokens_per_step = tokens_per_step_of(records, default_tokens_per_step)
        if "total_batch_size" not in records.config:
            print(f"note: {path} does not say its batch size; tokens assume {tokens_per_step} "
                  f"per step (--tokens_per_step)", file=sys.stderr)
        runs.append(run_from_records(name, path, records, tokens_per_step))
    return runs


# ----------------------------------------------------------------------------------------------
# Metrics: pure functions of the logged numbers

def tail_count(n: int, percent: int) -> int:
    """How many of n points make the last `percent`%, rounded up, at least one."""
    return max(1, -(-n * percent // 100))


def ema(values: np.ndarray, alpha: float) -> np.ndarray:
    smoothed = np.empty(len(values))
    smoothed[0] = values[0]
    for i in range(1, len(values)):
        smoothed[i] = alpha * values[i] + (1 - alpha) * smoothed[i - 1]
    return smoothed


def final_train_loss(losses: np.ndarray) -> float:
    return float(np.mean(losses[-tail_count(len(losses), 5):]))


def tail_noise(losses: np.ndarray) -> float:
    return float(np.std(losses[-tail_count(len(losses), 5):]))


def first_step_at_or_below(steps: np.ndarray, smoothed: np.ndarray, target: float):
    reached = np.nonzero(smoothed <= target)[0]
    return int(steps[reached[0]]) if len(reached) else None


def loss_area(steps: np.ndarray, losses: np.ndarray) -> float:
    if len(steps) == 1:
        return float(losses[0])
    fraction = (steps - steps[0]) / (steps[-1] - steps[0])
    return float(np.sum((losses[1:] + losses[:-1]) / 2 * np.diff(fraction)))


def spike_stats(losses: np.ndarray, window: int, k: float) -> tuple:
    """(number of spikes, largest excess over the running mean); see DEFINITIONS."""
    if len(losses) <= window:
        return 0, 0.0
    before = np.lib.stride_tricks.sliding_window_view(losses[:-1], window)  # (n-window, window)
    excess = losses[window:] - before.mean(axis=1)
    spiky = excess > k * before.std(axis=1)
    starts = spiky & ~np.concatenate([[False], spiky[:-1]])
    largest = float(excess[spiky].max()) if spiky.any() else 0.0
    return int(starts.sum()), largest


def change_std(losses: np.ndarray):
    second_half = losses[len(losses) // 2:]
    return float(np.std(np.diff(second_half))) if len(second_half) >= 2 else None


def late_drop_share(smoothed: np.ndarray):
    n = len(smoothed)
    total_drop = smoothed[0] - smoothed[-1]
    if n < 2 or total_drop <= 0:
        return None
    back = min(tail_count(n, 10), n - 1)
    return float((smoothed[-1 - back] - smoothed[-1]) / total_drop)


def finite_max(values: np.ndarray):
    finite = values[np.isfinite(values)]
    return float(finite.max()) if len(finite) else None


def finite_median(values: np.ndarray):
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if len(finite) else None


def min_loss_lr(lrs: np.ndarray, smoothed: np.ndarray):
    logged = np.isfinite(lrs)
    if not logged.any():
        return None
    return float(lrs[logged][np.argmin(smoothed[logged])])


def seed_noise(finals_per_group: list, tail_noise_per_group: list) -> list:
    """Each group's noise on its mean final loss; see DEFINITIONS."""
    stds = [float(np.std(finals, ddof=1)) for finals in finals_per_group if len(finals) >= 2]
    pooled = math.sqrt(sum(std ** 2 for std in stds) / len(stds)) if stds else None
    noise = []
    for finals, run_noise in zip(finals_per_group, tail_noise_per_group):
        if len(finals) >= 2:
            noise.append(float(np.std(finals, ddof=1)))
        else:
            noise.append(pooled if pooled is not None else run_noise)
    return noise


def rank_labels(means: list, noise: list, factor: float) -> list:
    """Per group, in the given order: its rank and the ranks it is within the noise of."""
    order = sorted(range(len(means)), key=lambda g: means[g])
    rank = {group: position + 1 for position, group in enumerate(order)}
    labels = []
    for g in range(len(means)):
        close = [rank[h] for h in order if h != g and
                 abs(means[g] - means[h]) <= factor * max(noise[g], noise[h])]
        labels.append(f"{rank[g]} ~{','.join(map(str, close))}" if close else str(rank[g]))
    return labels


# ----------------------------------------------------------------------------------------------
# From runs to table rows

def run_metrics(run: Run, smoothed: np.ndarray, target, args) -> dict:
    steps, loss = run.steps, run.loss
    target_step = None if target is None else first_step_at_or_below(steps, smoothed, target)
    spikes, largest_spike = spike_stats(loss, args.spike_window, args.spike_k)
    drop = late_drop_share(smoothed)
    lr_at_min = min_loss_lr(run.lr, smoothed) if run.is_range_test else None
    return dict(
        run=run.name, source=run.source, seed=run.config.get("seed"),
        steps=int(steps[-1]) + 1, tokens=(int(steps[-1]) + 1) * run.tokens_per_step,
        final_train_loss=final_train_loss(loss),
        final_val_loss=float(run.val_loss[-1]) if len(run.val_loss) else None,
        best_val_loss=float(run.val_loss.min()) if len(run.val_loss) else None,
        target_step=target_step,
        target_tokens=None if target_step is None else target_step * run.tokens_per_step,
        loss_area=loss_area(steps, loss), spikes=spikes, largest_spike=largest_spike,
        change_std=change_std(loss), max_grad_norm=finite_max(run.norm),
        median_tokens_per_second=finite_median(run.tokens_per_second),
        hellaswag=float(run.hella_acc[-1]) if len(run.hella_acc) else None,
        late_drop_share=drop,
        undertrained=drop is not None and drop > args.undertrained_share,
        suggested_max_lr=None if lr_at_min is None else lr_at_min / args.range_divisor)


def experiment_key(run: Run, index: int) -> str:
    if not run.config:  # a foreign log cannot show its seed, so it stands alone
        return f"run {index}"
    kept = {key: value for key, value in run.config.items() if key not in RUN_IDENTITY_KEYS}
    return json.dumps(kept, sort_keys=True)


def group_runs(runs: list) -> list:
    """Lists of run indices that differ only in seed, in the order their first run appears."""
    groups = {}
    for index, run in enumerate(runs):
        groups.setdefault(experiment_key(run, index), []).append(index)
    return list(groups.values())


def group_label(names: list) -> str:
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(names)
    return f"{prefix}*" if prefix else "+".join(names)


GROUP_METRICS = ("final_train_loss", "final_val_loss", "best_val_loss", "target_step",
                 "loss_area", "spikes", "change_std", "hellaswag")


def mean_and_std(values: list) -> tuple:
    present = [value for value in values if value is not None]
    if not present:
        return None, None
    return float(np.mean(present)), float(np.std(present, ddof=1)) if len(present) > 1 else None


def group_row(members: list, runs: list, rows: list) -> dict:
    """A group's label, seeds and the mean and std of its runs' metrics."""
    row = dict(group=group_label([runs[i].name for i in members]), runs=len(members),
               seeds=" ".join("-" if rows[i]["seed"] is None else str(rows[i]["seed"])
                              for i in members),
               undertrained=sum(rows[i]["undertrained"] for i in members),
               noise=None, rank="range test" if runs[members[0]].is_range_test else None)
    for metric in GROUP_METRICS:
        row[metric], row[metric + "_std"] = mean_and_std([rows[i][metric] for i in members])
    return row


def rank_groups(table: list, groups: list, runs: list, rows: list, noise_factor: float):
    """Fill in each group's noise and rank (range tests keep theirs), then its runs' rank."""
    ranked = [g for g, row in enumerate(table) if row["rank"] is None]
    noise = seed_noise([[rows[i]["final_train_loss"] for i in groups[g]] for g in ranked],
                       [tail_noise(runs[groups[g][0]].loss) for g in ranked])
    labels = rank_labels([table[g]["final_train_loss"] for g in ranked], noise, noise_factor)
    for g, level, label in zip(ranked, noise, labels):
        table[g].update(noise=level, rank=label)
    for members, row in zip(groups, table):
        for i in members:
            rows[i].update(group=row["group"], rank=row["rank"])


def default_target(smoothed_per_run: list):
    finals = [smoothed[-1] for smoothed in smoothed_per_run]
    return float(max(finals)) if finals else None


# ----------------------------------------------------------------------------------------------
# The table: Markdown for people, CSV for programs

def fixed(digits: int):
    return lambda value: f"{value:.{digits}f}"


def count_with_unit(value) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.2f}{unit}"
    return f"{value:g}"


def percent(value) -> str:
    return f"{100 * value:.1f}%"


RUN_COLUMNS = (  # (key, header, Markdown format)
    ("run", "run", str), ("source", "source", str), ("seed", "seed", str),
    ("group", "group", str), ("steps", "steps", str), ("tokens", "tokens", count_with_unit),
    ("final_train_loss", "final train", fixed(4)), ("final_val_loss", "final val", fixed(4)),
    ("best_val_loss", "best val", fixed(4)), ("target_step", "steps to target", str),
    ("target_tokens", "tokens to target", count_with_unit),
    ("loss_area", "loss area", fixed(4)), ("spikes", "spikes", str),
    ("largest_spike", "largest spike", fixed(4)), ("change_std", "change std", fixed(4)),
    ("max_grad_norm", "max norm", fixed(3)),
    ("median_tokens_per_second", "tok/s", lambda value: f"{value:.0f}"),
    ("hellaswag", "hellaswag", fixed(4)), ("late_drop_share", "last-10% drop", percent),
    ("undertrained", "undertrained", lambda value: "yes" if value else "no"),
    ("suggested_max_lr", "suggested max_lr", lambda value: f"{value:.3g}"),
    ("rank", "rank", str),
)

GROUP_COLUMNS = dict(  # metric key: (header, Markdown format of its mean and std)
    final_train_loss=("final train", fixed(4)), final_val_loss=("final val", fixed(4)),
    best_val_loss=("best val", fixed(4)), target_step=("steps to target", fixed(1)),
    loss_area=("loss area", fixed(4)), spikes=("spikes", fixed(2)),
    change_std=("change std", fixed(4)), hellaswag=("hellaswag", fixed(4)),
)


def markdown_table(headers: list, cells: list) -> str:
    widths = [max(len(text) for text in column) for column in zip(headers, *cells)]
    lines = [headers, ["-" * width for width in widths], *cells]
    return "\n".join("| " + " | ".join(text.ljust(width) for text, width in zip(line, widths))
                     + " |" for line in lines)


def cell(value, form) -> str:
    return "-" if value is None else form(value)


def runs_markdown(rows: list) -> str:
    headers = [header for _, header, _ in RUN_COLUMNS]
    cells = [[cell(row[key], form) for key, _, form in RUN_COLUMNS] for row in rows]
    return markdown_table(headers, cells)


def mean_std_cell(mean, std, form) -> str:
    if mean is None:
        return "-"
    return form(mean) if std is None else f"{form(mean)} ± {form(std)}"


def groups_markdown(table: list) -> str:
    headers = ["group", "runs", "seeds", *(header for header, _ in GROUP_COLUMNS.values()),
               "undertrained", "noise", "rank"]
    cells = []
    for row in table:
        stats = [mean_std_cell(row[key], row[key + "_std"], form)
                 for key, (_, form) in GROUP_COLUMNS.items()]
        cells.append([row["group"], str(row["runs"]), row["seeds"], *stats,
                      f"{row['undertrained']}/{row['runs']}", cell(row["noise"], fixed(4)),
                      row["rank"]])
    return markdown_table(headers, cells)


def csv_text(rows: list, keys: list) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(keys)
    for row in rows:
        writer.writerow(["" if row.get(key) is None else csv_value(row[key]) for key in keys])
    return buffer.getvalue()


def csv_value(value):
    return ("yes" if value else "no") if isinstance(value, bool) else value


def settings_text(args, target, target_given: bool) -> str:
    origin = "--target_loss" if target_given else "the highest final smoothed train loss"
    target_text = "none (no run to compare)" if target is None else f"{target:.4f} ({origin})"
    return (f"target loss {target_text}; ema_alpha {args.ema_alpha}; spike_window "
            f"{args.spike_window}; spike_k {args.spike_k}; undertrained_share "
            f"{args.undertrained_share}; noise_factor {args.noise_factor}; range_divisor "
            f"{args.range_divisor}")


def report_markdown(rows: list, table: list, settings: str) -> str:
    return (f"## Runs\n\n{runs_markdown(rows)}\n\n## Groups (runs that differ only in seed)\n\n"
            f"{groups_markdown(table)}\n\nRank \"2 ~1,3\": second lowest mean final train loss, "
            f"within the seed noise of the first and the third.\nSettings: {settings}.\n")


# ----------------------------------------------------------------------------------------------
# The figure

LINE_STYLES = ("-", "--", ":", "-.")


def run_styles(groups: list, run_count: int) -> list:
    """(colour, line style) per run: a colour per group, a line style per seed within it."""
    import matplotlib
    tab20 = matplotlib.colormaps["tab20"]
    # tab20's ten strong colours first, then their pale partners, drawn dashed to tell apart.
    palette = [tab20(i) for i in range(0, 20, 2)] + [tab20(i) for i in range(1, 20, 2)]
    styles = [None] * run_count
    for g, members in enumerate(groups):
        for seed_index, i in enumerate(members):
            styles[i] = (palette[g % 20], LINE_STYLES[(seed_index + g // 10) % 4])
    return styles


def x_of(run: Run, steps: np.ndarray, axis: str) -> np.ndarray:
    return steps * run.tokens_per_step if axis == "tokens" else steps


def loss_limits(runs: list, smoothed_per_run: list) -> tuple:
    """Leave out the first 5% of each run, where every schedule's loss falls from ~ln(vocab)."""
    top = max(smoothed[len(smoothed) // 20] for smoothed in smoothed_per_run)
    bottom = min(float(run.loss.min()) for run in runs)
    margin = 0.05 * (top - bottom) if top > bottom else 0.5
    return bottom - margin, top + margin


def draw_train_loss(ax, runs, smoothed_per_run, styles, axis, target):
    for run, smoothed, (colour, style) in zip(runs, smoothed_per_run, styles):
        x = x_of(run, run.steps, axis)
        ax.plot(x, run.loss, color=colour, linewidth=0.6, alpha=0.2)
        ax.plot(x, smoothed, color=colour, linestyle=style, linewidth=1.4, label=run.name)
    if target is not None:
        ax.axhline(target, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylim(*loss_limits(runs, smoothed_per_run))
    ax.set_title("train loss (faint: raw, line: smoothed)")
    ax.set_ylabel("loss")


def draw_second_half(ax, runs, smoothed_per_run, styles, axis):
    """The smoothed loss from each run's middle on, scaled to it: where schedules part ways."""
    lowest, highest = math.inf, -math.inf
    for run, smoothed, (colour, style) in zip(runs, smoothed_per_run, styles):
        half = len(smoothed) // 2
        ax.plot(x_of(run, run.steps[half:], axis), smoothed[half:], color=colour,
                linestyle=style, linewidth=1.4, label=run.name)
        lowest, highest = min(lowest, smoothed[half:].min()), max(highest, smoothed[half:].max())
    margin = 0.05 * (highest - lowest) if highest > lowest else 0.05
    ax.set_ylim(lowest - margin, highest + margin)
    ax.set_title("smoothed train loss, second half of each run")


def draw_lr(ax, runs, styles, axis):
    for run, (colour, style) in zip(runs, styles):
        if np.isfinite(run.lr).any():
            ax.plot(x_of(run, run.steps, axis), run.lr, color=colour, linestyle=style,
                    label=run.name)
    ax.set_title("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))


def draw_points(ax, runs, styles, axis, kind: str):
    for run, (colour, style) in zip(runs, styles):
        steps, values = (run.val_steps, run.val_loss) if kind == "val" else \
            (run.hella_steps, run.hella_acc)
        if len(steps):
            ax.plot(x_of(run, steps, axis), values, color=colour, linestyle=style, marker="o",
                    markersize=3, label=run.name)
    ax.set_title("val loss" if kind == "val" else "HellaSwag accuracy")


def draw_range_tests(ax, runs, smoothed_per_run, styles, rows):
    for run, smoothed, (colour, style), row in zip(runs, smoothed_per_run, styles, rows):
        ax.plot(run.lr, run.loss, color=colour, linewidth=0.6, alpha=0.2)
        ax.plot(run.lr, smoothed, color=colour, linestyle=style, label=run.name)
        if row["suggested_max_lr"] is not None:
            ax.axvline(row["suggested_max_lr"], color=colour, linestyle="--", linewidth=1)
            ax.annotate(f"max_lr {row['suggested_max_lr']:.2g}", (row["suggested_max_lr"], 1),
                        xycoords=("data", "axes fraction"), rotation=90, va="top",
                        ha="right", fontsize=8, color=colour)
    ax.set_xscale("log")
    top = max(smoothed[0] for smoothed in smoothed_per_run)
    ax.set_ylim(min(float(run.loss.min()) for run in runs) - 0.1, top + 0.5)
    ax.set_title("range test: loss against LR (dashed: suggested max_lr)")
    ax.set_xlabel("learning rate")


def subset(items: list, indices: list) -> list:
    return [items[i] for i in indices]


def panel_drawers(runs, smoothed_per_run, styles, rows, axis, target) -> list:
    """One function per panel the data calls for, each drawing on the axes it is given."""
    trained = [i for i, run in enumerate(runs) if not run.is_range_test]
    tests = [i for i, run in enumerate(runs) if run.is_range_test]
    runs_t, styles_t = subset(runs, trained), subset(styles, trained)
    smoothed_t = subset(smoothed_per_run, trained)
    panels = []
    if trained:
        panels.append(lambda ax: draw_train_loss(ax, runs_t, smoothed_t, styles_t, axis, target))
        panels.append(lambda ax: draw_second_half(ax, runs_t, smoothed_t, styles_t, axis))
    if any(np.isfinite(run.lr).any() for run in runs_t):
        panels.append(lambda ax: draw_lr(ax, runs_t, styles_t, axis))
    if any(len(run.val_steps) for run in runs_t):
        panels.append(lambda ax: draw_points(ax, runs_t, styles_t, axis, "val"))
    if any(len(run.hella_steps) for run in runs_t):
        panels.append(lambda ax: draw_points(ax, runs_t, styles_t, axis, "hella"))
    if tests:
        panels.append(lambda ax: draw_range_tests(
            ax, subset(runs, tests), subset(smoothed_per_run, tests), subset(styles, tests),
            subset(rows, tests)))
    return panels


def draw_figure(path: Path, runs, smoothed_per_run, styles, rows, axis, target) -> None:
    import matplotlib  # here, so that errors and --help do not wait for it to load
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    panels = panel_drawers(runs, smoothed_per_run, styles, rows, axis, target)
    columns = 1 if len(panels) == 1 else 2
    panel_rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(panel_rows, columns, squeeze=False, layout="constrained",
                                figsize=(6.5 * columns + 2.5, 4.2 * panel_rows))
    for ax, draw in zip(axes.flat, panels):
        draw(ax)
        ax.grid(alpha=0.3)
        if not ax.get_xlabel():
            ax.set_xlabel("tokens" if axis == "tokens" else "step")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    legend = {}  # one entry per run, whichever panel drew it first
    for ax in axes.flat:
        for line in ax.get_lines():
            if not line.get_label().startswith("_"):
                legend.setdefault(line.get_label(), line)
    figure.legend(legend.values(), legend.keys(), loc="outside right upper", fontsize=8)
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
    os.replace(temporary, path)


# ----------------------------------------------------------------------------------------------
# Command line

def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_tables(out: Path, markdown: str, rows: list, table: list) -> None:
    out.mkdir(parents=True, exist_ok=True)
    # The file also carries the definitions, so that a report read alone can be understood.
    write_atomically(out / "table.md", f"{markdown}\n```\n{DEFINITIONS}```\n")
    write_atomically(out / "runs.csv", csv_text(rows, [key for key, _, _ in RUN_COLUMNS]))
    group_keys = ["group", "runs", "seeds", "undertrained", "noise", "rank"] + [
        key + suffix for key in GROUP_METRICS for suffix in ("", "_std")]
    write_atomically(out / "groups.csv", csv_text(table, group_keys))


def compare(args) -> None:
    runs = load_runs(args.paths, args.tokens_per_step)
    smoothed_per_run = [ema(run.loss, args.ema_alpha) for run in runs]
    target = args.target_loss
    if target is None:
        target = default_target([s for run, s in zip(runs, smoothed_per_run)
                                 if not run.is_range_test])
    rows = [run_metrics(run, smoothed, target, args)
            for run, smoothed in zip(runs, smoothed_per_run)]
    groups = group_runs(runs)
    table = [group_row(members, runs, rows) for members in groups]
    rank_groups(table, groups, runs, rows, args.noise_factor)
    markdown = report_markdown(rows, table, settings_text(args, target,
                                                          args.target_loss is not None))
    print(markdown)
    try:
        write_tables(args.out_dir, markdown, rows, table)
        draw_figure(args.out_dir / "compare.png", runs, smoothed_per_run,
                    run_styles(groups, len(runs)), rows, args.x, target)
    except OSError as error:
        raise CompareError(f"cannot write to {args.out_dir} ({error.strerror}); choose "
                           f"another --out_dir") from None
    print(f"wrote compare.png, table.md, runs.csv and groups.csv to {args.out_dir}")


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def number_in(kind, low, high=math.inf, low_open=False):
    """An argparse type: `kind` in [low, high], or (low, high] when low_open."""
    def parse(text):
        value = kind(text)  # argparse turns a ValueError into its own error line
        if value < low or (low_open and value == low) or value > high:
            left = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"{text} is not in {left}{low}, {high}]")
        return value
    parse.__name__ = kind.__name__
    return parse


def parse_args(argv=None):
    parser = OneLineParser(description=__doc__, epilog=DEFINITIONS,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("log")],
                        help="run folders, or folders searched for them (default: log)")
    parser.add_argument("-o", "--out_dir", type=Path, default=Path("report"),
                        help="where the figure, table.md and the CSVs go (default: report)")
    parser.add_argument("--target_loss", type=float, default=None,
                        help="loss for the steps/tokens-to-target columns (default: the "
                             "highest final smoothed train loss among the runs)")
    parser.add_argument("--x", choices=("steps", "tokens"), default="steps",
                        help="x axis of the figure (default: steps)")
    parser.add_argument("--ema_alpha", type=number_in(float, 0, 1, low_open=True), default=0.1,
                        help="weight of the newest loss in the smoothed loss (default: 0.1)")
    parser.add_argument("--spike_window", type=number_in(int, 2), default=50,
                        help="losses in the running mean and std of spikes (default: 50)")
    parser.add_argument("--spike_k", type=number_in(float, 0), default=4.0,
                        help="a spike is this many running stds above the mean (default: 4)")
    parser.add_argument("--undertrained_share", type=number_in(float, 0, 1), default=0.05,
                        help="undertrained when the last 10%% of steps made more than this "
                             "share of the smoothed loss's fall (default: 0.05)")
    parser.add_argument("--noise_factor", type=number_in(float, 0), default=2.0,
                        help="groups differ when their mean final losses are this many "
                             "noise levels apart (default: 2)")
    parser.add_argument("--range_divisor", type=number_in(float, 1), default=10.0,
                        help="suggested max_lr = LR at the lowest smoothed range-test loss "
                             "divided by this (default: 10)")
    parser.add_argument("--tokens_per_step", type=number_in(int, 1),
                        default=DEFAULT_TOKENS_PER_STEP,
                        help="tokens per step for logs that do not say (build-nanogpt, "
                             f"llm.c; default: {DEFAULT_TOKENS_PER_STEP})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        compare(args)
    except CompareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
