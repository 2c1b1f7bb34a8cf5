"""Train several learning-rate schedules (and seeds) with otherwise identical settings.

    python sweep.py --schedules constant cosine wsd -- --model d4 --device cpu --max_steps 200
    python sweep.py --nproc_per_node 8                     # six schedules, one after another
    python sweep.py --seeds 1 2 3 --gpus 0,1,2,3           # 18 runs, four at once, one GPU each

Sweep flags come first; everything after `--` goes to train_gpt2.py, the same for every run.
The sweep sets --lr_schedule, --run_name, --seed and --resume itself, and gives a schedule's own
flags (--decay_frac, --milestones, ...) only to the schedules that take them. Runs go to
<log_dir>/<schedule>, or <log_dir>/<schedule>_s<seed> when there are several seeds; each run's
console output is kept in its folder as output.txt.

A run whose log.txt ends with `# finished step N` is skipped; one that started and stopped is
continued with --resume (from its latest checkpoint, or from step 0 if it has none). A run that
fails is reported and the others go on. Then compare.py draws and tabulates every run that
logged a step. Exit code: 0 when every run finished, 1 when a run or the comparison failed,
2 for a bad flag, 130 when interrupted (run the same command again to continue).
"""
import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAINER = HERE / "train_gpt2.py"
COMPARE = HERE / "compare.py"
DEFAULT_SCHEDULES = ("constant", "step", "multistep", "cosine", "linear", "wsd")
# Trainer flags that differ between the runs of a sweep, so the sweep alone sets them.
SWEEP_OWNED = {"lr_schedule": "--schedules", "run_name": "the schedule's name",
               "resume": "the sweep (it resumes unfinished runs)", "seed": "--seeds"}
FINISHED = re.compile(r"^# finished step (\d+)\s*$", re.MULTILINE)
TRAIN_LINE = re.compile(r"^\d+ train ", re.MULTILINE)
POLL_SECONDS = 0.2


class UserError(Exception):
    """A flag the user can fix; main() prints the one-line message and exits with code 2."""


# ----------------------------------------------------------------------------------------------
# The command line: the sweep's own flags, then the trainer's after `--`

class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"error: {message}; see {self.prog} --help\n")


def gpu_list(text: str) -> list:
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids:
        raise argparse.ArgumentTypeError(f"{text!r} names no GPU; give ids such as 0,1,2,3")
    return ids


def positive_int(text: str) -> int:
    value = int(text)  # argparse turns a ValueError into its own error line
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev off: the trainer's --seed must never be read as an abbreviation of --seeds.
    parser = OneLineParser(description=__doc__, allow_abbrev=False,
                           usage="%(prog)s [sweep flags] [-- train_gpt2.py flags]",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", nargs="+", default=list(DEFAULT_SCHEDULES),
                        metavar="NAME", help="schedules to train (default: "
                                             f"{' '.join(DEFAULT_SCHEDULES)})")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="seeds; every schedule runs once per seed (default: the "
                             "trainer's --seed, 1337 unless given after --)")
    parser.add_argument("--parallel", type=positive_int,
                        help="runs at once (default: on CUDA every GPU of --gpus in use, "
                             "nproc_per_node each; on CPU 1)")
    parser.add_argument("--gpus", type=gpu_list,
                        help="comma-separated GPU ids to share out, nproc_per_node per run, "
                             "through CUDA_VISIBLE_DEVICES (default: CUDA_VISIBLE_DEVICES, "
                             "else every GPU)")
    parser.add_argument("--nproc_per_node", type=positive_int, default=1,
                        help="processes per run; above 1 each run starts under torchrun "
                             "(default: 1)")
    parser.add_argument("--threads", type=positive_int,
                        help="CPU only: OMP_NUM_THREADS per process (default: the cores "
                             "split evenly over parallel runs x nproc_per_node)")
    parser.add_argument("--report_dir", type=Path, default=Path("report"),
                        help="compare.py's output folder (default: report)")
    parser.add_argument("--compare", action=argparse.BooleanOptionalAction, default=True,
                        help="run compare.py on the sweep's runs at the end (default: on)")
    parser.add_argument("--dry_run", action="store_true",
                        help="print each run's environment and command, and start nothing")
    return parser


def split_argv(argv: list) -> tuple:
    """(sweep flags, trainer flags): the trainer's are everything after the first `--`."""
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1:]
    return argv, []


def parse_sweep_flags(parser, argv: list) -> argparse.Namespace:
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        parser.error(f"unknown sweep flag(s) {' '.join(unknown)}; train_gpt2.py flags go "
                     f"after `--`")
    if len(set(args.schedules)) < len(args.schedules):
        parser.error("--schedules names a schedule twice; name each once")
    if args.seeds and len(set(args.seeds)) < len(args.seeds):
        parser.error("--seeds names a seed twice; name each once")
    return args


# ----------------------------------------------------------------------------------------------
# The trainer's flags: read with the trainer's own parser, checked once for every schedule

class NotGiven:
    """Marks a trainer flag left at its default: argparse only fills in attributes it lacks."""

    def __repr__(self):
        return "<not given>"


NOT_GIVEN = NotGiven()


@dataclass
class TrainerFlags:
    parser: argparse.ArgumentParser
    given: dict  # dest -> value of every flag given after `--`
    resolved: argparse.Namespace  # every flag, defaults filled in


def read_trainer_flags(argv: list) -> TrainerFlags:
    import train_gpt2
    parser = train_gpt2.build_parser()
    parser.prog = "train_gpt2.py"  # its errors then name the script whose flag was wrong
    dests = [action.dest for action in parser._actions if action.dest != "help"]
    marked = parser.parse_args(argv, namespace=argparse.Namespace(
        **{dest: NOT_GIVEN for dest in dests}))
    given = {dest: value for dest, value in vars(marked).items() if value is not NOT_GIVEN}
    return TrainerFlags(parser, given, parser.parse_args(argv))


def check_sweep_owned(flags: TrainerFlags, args) -> None:
    for dest, owner in SWEEP_OWNED.items():
        if dest == "seed" and not args.seeds:
            continue  # one seed for every run, given the trainer's way: allowed
        if dest in flags.given:
            raise UserError(f"--{dest} after `--` is set per run by {owner}; remove it")


def schedule_flags(schedule: str, flags: TrainerFlags) -> dict:
    """The given flags this schedule takes: every non-schedule flag, the shared schedule flags,
    and the schedule-specific ones it uses (the trainer refuses the others)."""
    import schedulers
    users = schedulers.PARAMETER_USERS
    return {dest: value for dest, value in flags.given.items()
            if dest not in users or schedule in users[dest]}


def check_schedules(args, flags: TrainerFlags) -> None:
    """Build every schedule once here, so a bad value stops the sweep before any run starts."""
    import schedulers
    unknown = [name for name in args.schedules if name not in schedulers.SCHEDULES]
    if unknown:
        raise UserError(f"unknown schedule(s) {' '.join(unknown)}; choose from "
                        f"{', '.join(schedulers.SCHEDULES)}")
    for dest in flags.given:
        users = schedulers.PARAMETER_USERS.get(dest)
        if users and not set(users) & set(args.schedules):
            raise UserError(f"--{dest} is used by {', '.join(users)} only, which this sweep "
                            f"does not run; remove it or add one of them to --schedules")
    for name in args.schedules:
        namespace = argparse.Namespace(**vars(flags.resolved))
        namespace.lr_schedule = name
        for dest in schedulers.PARAMETER_USERS:
            if dest not in schedule_flags(name, flags):
                setattr(namespace, dest, None)
        try:
            schedulers.schedule_from_args(namespace)
        except schedulers.ScheduleError as error:
            raise UserError(f"schedule {name}: {error}") from None


def flag_words(parser, dest: str, value) -> list:
    """A parsed flag written back as command-line words the trainer reads the same way."""
    action = next(action for action in parser._actions if action.dest == dest)
    name = next(option for option in action.option_strings if option.startswith("--"))
    if isinstance(action, argparse.BooleanOptionalAction):
        return [name if value else "--no-" + name[2:]]
    if value is None:
        return []  # a flag whose default is None, given no value: nothing to pass
    if isinstance(value, list):
        return [name, *map(str, value)]
    return [name, str(value)]


# ----------------------------------------------------------------------------------------------
# Runs and the slots they run in

@dataclass
class Job:
    name: str
    schedule: str
    seed: int
    argv: list  # trainer flags for this run, --resume excepted
    run_dir: Path
    action: str = "start"  # start, resume or skip
    note: str = ""


def plan_jobs(args, flags: TrainerFlags) -> list:
    seeds = args.seeds or [flags.resolved.seed]
    log_dir = Path(flags.resolved.log_dir)
    jobs = []
    for seed in seeds:  # every schedule of the first seed first: an early full comparison
        for schedule in args.schedules:
            name = schedule if len(seeds) == 1 else f"{schedule}_s{seed}"
            given = dict(schedule_flags(schedule, flags), lr_schedule=schedule,
                         run_name=name, seed=seed)
            argv = [word for dest, value in given.items()
                    for word in flag_words(flags.parser, dest, value)]
            jobs.append(Job(name, schedule, seed, argv, log_dir / name))
    return jobs


def finished_step(log_path: Path):
    """N of the log's last `# finished step N` line, or None."""
    if not log_path.is_file():
        return None
    found = FINISHED.findall(log_path.read_text(encoding="utf-8", errors="replace"))
    return int(found[-1]) if found else None


def decide(job: Job, max_steps: int) -> None:
    """Skip a finished run, resume a started one, start a new one."""
    log_path = job.run_dir / "log.txt"
    done = finished_step(log_path)
    if done is not None:
        job.action = "skip"
        job.note = f"finished step {done}"
        if done != max_steps:
            job.action = "mismatch"
            job.note = (f"{log_path} finished at step {done}, this sweep asks for "
                        f"{max_steps}; use another --log_dir or --max_steps {done}")
        return
    if log_path.exists() or any(job.run_dir.glob("ckpt_*.pt")):
        job.action = "resume"
        checkpoints = sorted(job.run_dir.glob("ckpt_*.pt"))
        job.note = f"from {checkpoints[-1].name}" if checkpoints else "no checkpoint: from step 0"


def uses_cuda(device: str) -> bool:
    if device in ("cpu", "mps"):
        return False
    if device == "cuda":
        return True
    import torch
    return torch.cuda.is_available()


def visible_gpus(args) -> list:
    if args.gpus:
        return args.gpus
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        # Children see their own CUDA_VISIBLE_DEVICES, so hand out the ids this one names.
        return gpu_list(os.environ["CUDA_VISIBLE_DEVICES"])
    import torch
    return [str(index) for index in range(torch.cuda.device_count())]


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity call
        return os.cpu_count() or 1


def make_slots(args, cuda: bool) -> list:
    """One environment per run that may go at once: its GPUs, or its share of the cores."""
    per_run = args.nproc_per_node
    if cuda:
        gpus = visible_gpus(args)
        parallel = args.parallel or max(1, len(gpus) // per_run)
        if parallel * per_run > len(gpus):
            raise UserError(f"{parallel} runs x {per_run} processes need {parallel * per_run} "
                            f"GPUs, {len(gpus)} available ({','.join(gpus) or 'none'}); lower "
                            f"--parallel or --nproc_per_node, or list more --gpus")
        return [dict(CUDA_VISIBLE_DEVICES=",".join(gpus[i * per_run:(i + 1) * per_run]))
                for i in range(parallel)]
    if args.gpus:
        raise UserError("--gpus given but the runs train on the CPU; add `-- --device cuda` "
                        "or drop --gpus")
    parallel = args.parallel or 1
    threads = args.threads or max(1, cpu_cores() // (parallel * per_run))
    return [dict(OMP_NUM_THREADS=str(threads)) for _ in range(parallel)]


def command_of(job: Job, nproc_per_node: int) -> list:
    launcher = [sys.executable]
    if nproc_per_node > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone",
                     f"--nproc_per_node={nproc_per_node}"]
    resume = ["--resume"] if job.action == "resume" else []
    return [*launcher, str(TRAINER), *job.argv, *resume]


def slot_text(slot: dict) -> str:
    return " ".join(f"{key}={value}" for key, value in slot.items())


# ----------------------------------------------------------------------------------------------
# Running: one line per run started, finished, skipped or failed

def say(verb: str, job: Job, text: str = "") -> None:
    print(f"{verb:<8} {job.name:<18} {text}".rstrip(), flush=True)


def last_error_line(output_path: Path) -> str:
    """The trainer's `error: ...` line if it printed one, else the last line of its output."""
    try:
        lines = [line.strip() for line in
                 output_path.read_text(encoding="utf-8", errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return "no output"
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1][:200]


def last_losses(log_path: Path) -> str:
    """`train X | val Y` from the log's last train and val lines, for the run's done line."""
    last = {}
    for line in log_path.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if len(words) >= 3 and words[1] in ("train", "val") and not line.startswith("#"):
            last[words[1]] = words[2]
    return " | ".join(f"last {kind} loss {float(last[kind]):.4f}" for kind in ("train", "val")
                      if kind in last)


@dataclass
class Running:
    job: Job
    process: subprocess.Popen
    output: object  # the open output.txt
    slot: int
    started: float


def start(job: Job, slot_index: int, slot: dict, nproc_per_node: int) -> Running:
    job.run_dir.mkdir(parents=True, exist_ok=True)
    output = open(job.run_dir / "output.txt", "a")  # a resumed run's output follows the last
    env = dict(os.environ, PYTHONUNBUFFERED="1", **slot)
    process = subprocess.Popen(command_of(job, nproc_per_node), stdout=output,
                               stderr=subprocess.STDOUT, env=env)
    verb = "resume" if job.action == "resume" else "start"
    say(verb, job, f"{job.note + ' | ' if job.note else ''}{slot_text(slot)} | output "
                   f"{job.run_dir / 'output.txt'}")
    return Running(job, process, output, slot_index, time.monotonic())


def report_end(run: Running, code: int) -> bool:
    """Print the run's finish or failure line; True when it finished."""
    run.output.close()
    seconds = time.monotonic() - run.started
    log_path = run.job.run_dir / "log.txt"
    if code == 0 and finished_step(log_path) is not None:
        losses = last_losses(log_path)
        say("done", run.job, f"{seconds:.0f} s" + (f" | {losses}" if losses else ""))
        return True
    why = f"exit {code}" if code else "exit 0 without a `# finished` line"
    say("FAILED", run.job, f"{why} after {seconds:.0f} s: "
                           f"{last_error_line(run.job.run_dir / 'output.txt')} | output "
                           f"{run.job.run_dir / 'output.txt'}")
    return False


def stop_all(running: list) -> None:
    """Stop the runs still going; their checkpoints let the next sweep resume them."""
    for run in running:
        if run.process.poll() is None:
            run.process.terminate()
    deadline = time.monotonic() + 30
    for run in running:
        try:
            run.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.process.wait()
        run.output.close()


def run_jobs(jobs: list, slots: list, nproc_per_node: int) -> list:
    """Run the jobs, as many at once as there are slots; returns the names of failed runs."""
    pending, running, failed = deque(jobs), [], []
    free = list(range(len(slots)))
    try:
        while pending or running:
            while pending and free:
                slot_index = free.pop(0)
                running.append(start(pending.popleft(), slot_index, slots[slot_index],
                                     nproc_per_node))
            time.sleep(POLL_SECONDS)
            for run in [run for run in running if run.process.poll() is not None]:
                running.remove(run)
                free.append(run.slot)
                if not report_end(run, run.process.returncode):
                    failed.append(run.job.name)
    except KeyboardInterrupt:
        stop_all(running)
        raise
    return failed


def run_compare(jobs: list, report_dir: Path) -> bool:
    """compare.py on every run of this sweep that logged a step; True when it succeeded."""
    folders = [job.run_dir for job in jobs if (job.run_dir / "log.txt").is_file()
               and TRAIN_LINE.search((job.run_dir / "log.txt").read_text(encoding="utf-8"))]
    left_out = [job.name for job in jobs if job.run_dir not in folders]
    if left_out:
        print(f"compare: left out {' '.join(left_out)} (no train step logged)", flush=True)
    if not folders:
        return True  # the failures are reported already; there is nothing to draw
    command = [sys.executable, str(COMPARE), *map(str, folders), "--out_dir", str(report_dir)]
    return subprocess.run(command).returncode == 0


# ----------------------------------------------------------------------------------------------
# main

def header(jobs: list, slots: list, args, log_dir: str) -> str:
    seeds = sorted({job.seed for job in jobs})
    per_run = f", {args.nproc_per_node} processes per run" if args.nproc_per_node > 1 else ""
    return (f"sweep: {len(jobs)} runs ({' '.join(args.schedules)}; seed "
            f"{' '.join(map(str, seeds))}) in {log_dir}/, {len(slots)} at once{per_run}")


def dry_run(jobs: list, slots: list, nproc_per_node: int) -> None:
    """The command each run would get, with the slot it would take first."""
    for index, job in enumerate(jobs):
        if job.action in ("skip", "mismatch"):
            say(job.action, job, job.note)
            continue
        slot = slots[index % len(slots)]
        words = [*(f"{key}={value}" for key, value in slot.items()),
                 *command_of(job, nproc_per_node)]
        say(job.action, job, shlex.join(words))


def sweep(args, trainer_argv: list) -> int:
    flags = read_trainer_flags(trainer_argv)
    check_sweep_owned(flags, args)
    check_schedules(args, flags)
    jobs = plan_jobs(args, flags)
    slots = make_slots(args, uses_cuda(flags.resolved.device))
    for job in jobs:
        decide(job, flags.resolved.max_steps)
    print(header(jobs, slots, args, flags.resolved.log_dir), flush=True)
    if args.dry_run:
        dry_run(jobs, slots, args.nproc_per_node)
        return 0
    for job in jobs:
        if job.action in ("skip", "mismatch"):
            say("skip" if job.action == "skip" else "FAILED", job, job.note)
    failed = [job.name for job in jobs if job.action == "mismatch"]
    todo = [job for job in jobs if job.action in ("start", "resume")]
    failed += run_jobs(todo, slots, args.nproc_per_node)
    compared = run_compare(jobs, args.report_dir) if args.compare else True
    if failed:
        print(f"sweep: {len(failed)} of {len(jobs)} runs failed: {' '.join(failed)}; see "
              f"their output.txt, fix, and run the same command again", flush=True)
    if not compared:
        print("sweep: compare.py failed (its error is above)", flush=True)
    return 1 if failed or not compared else 0


def interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    sweep_argv, trainer_argv = split_argv(argv)
    args = parse_sweep_flags(build_parser(), sweep_argv)
    previous = signal.signal(signal.SIGTERM, interrupt)  # stop the runs when it is stopped
    try:
        return sweep(args, trainer_argv)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sweep: interrupted; run the same command again to resume the unfinished runs",
              flush=True)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
