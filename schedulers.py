"""Learning-rate schedules for train_gpt2.py, each a pure function of the optimizer step.

    python schedulers.py --list              # every schedule, its parameters and defaults
    python schedulers.py --plot cosine step multistep wsd --max_steps 19073 -o lr.png

train_gpt2.py picks a schedule with --lr_schedule NAME and takes the same parameter flags.

Every schedule starts with the same linear warmup, max_lr * (step + 1) / warmup_steps for
step < warmup_steps, so runs that share --warmup_steps share their start. After it:
  - curves over the run (cosine, linear, exponential, polynomial, onecycle, cosine_restarts,
    cyclic, range_test) start their own clock at 0 when warmup ends and fit into the
    max_steps - warmup_steps steps left: lr(step) = curve(step - warmup_steps). For the torch
    ones this is what torch's SequentialLR([warmup, X], milestones=[warmup_steps]) with X's
    length (total_steps, total_iters) set to max_steps - warmup_steps.
  - the others (constant, step, multistep, wsd, inverse_sqrt, plateau) are written in the
    optimizer step itself and read it unchanged: step and multistep equal torch's StepLR and
    MultiStepLR at every step after warmup, and their drops may not fall inside it.
With --warmup_steps 0 every schedule equals the torch scheduler it names. onecycle,
cyclic and range_test climb by themselves, so they are usually run with --warmup_steps 0.
"""
import argparse
import bisect
import dataclasses
import difflib
import io
import math
import numbers
import os
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


class ScheduleError(ValueError):
    """A bad schedule name or parameter; the message is one line for the user."""


def require(condition: bool, problem: str, fix: str) -> None:
    if not condition:
        raise ScheduleError(f"{problem}; {fix}")


def require_choice(what: str, value: str, choices) -> None:
    """`value` is one of `choices`, or a ScheduleError that suggests the closest one."""
    if value in choices:
        return
    close = difflib.get_close_matches(value, list(choices), n=1)
    fix = f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(choices)}"
    raise ScheduleError(f"unknown {what} {value!r}; {fix}")


def param(default=None, help: str = ""):
    """A schedule parameter: its default and the text its command-line flag shows."""
    return dataclasses.field(default=default, metadata={"help": help})


def field_kind(field: dataclasses.Field) -> tuple[type, bool]:
    """The scalar type of a parameter (int, float or str) and whether it holds a list."""
    kinds = [k for k in typing.get_args(field.type) or (field.type,) if k is not type(None)]
    if typing.get_origin(kinds[0]) is list:
        return typing.get_args(kinds[0])[0], True
    return kinds[0], False


KIND_WORDS = {int: "a whole number", float: "a number", str: "a string"}


def checked_value(name: str, value, kind: type):
    """`value` as a `kind`, or a ScheduleError; an int may stand for a float, a bool for neither."""
    if kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    require(kind is str and isinstance(value, str), f"--{name} must be {KIND_WORDS[kind]}, "
            f"got {value!r}", f"pass {KIND_WORDS[kind]} to --{name}")
    return value


def coerce_parameters(schedule) -> None:
    """Check each parameter's type in place; an int given for a float becomes a float."""
    for field in dataclasses.fields(schedule):
        value = getattr(schedule, field.name)
        if value is None:
            continue
        kind, is_list = field_kind(field)
        if is_list:
            require(isinstance(value, (list, tuple)), f"--{field.name} must be a list, got "
                    f"{value!r}", f"pass one or more values to --{field.name}")
            value = [checked_value(field.name, item, kind) for item in value]
        else:
            value = checked_value(field.name, value, kind)
        setattr(schedule, field.name, value)


def half_cosine(fraction: float) -> float:
    """1 at fraction 0, down half a cosine wave to 0 at fraction 1."""
    return 0.5 * (1.0 + math.cos(math.pi * fraction))


def check_factor(name: str, value: float) -> None:
    require(0 < value <= 1, f"--{name} {value} is outside (0, 1]",
            "pass a factor such as 0.5 (1 keeps the LR constant)")


# ----------------------------------------------------------------------------------------------
# The schedules

@dataclass
class Schedule:
    """Linear warmup, then lr_at(); the module docstring says how the two compose."""
    max_lr: float = param(6e-4, "peak learning rate, reached at the end of warmup")
    min_lr: float | None = param(None, "lowest learning rate (default 0.1 * max_lr)")
    warmup_steps: int = param(715, "steps of linear warmup, max_lr * (step + 1) / warmup_steps")
    max_steps: int = param(19073, "optimizer steps in the run")

    name: ClassVar[str] = ""
    # True: the curve's clock starts at 0 when warmup ends (see the module docstring).
    clock_starts_after_warmup: ClassVar[bool] = True
    aliases: ClassVar[dict[str, str]] = {}  # old parameter name -> current one

    def __post_init__(self):
        coerce_parameters(self)
        if self.min_lr is None:  # rounded so logs show 6e-05, not 5.9999999999999995e-05
            self.min_lr = float(f"{0.1 * self.max_lr:.15g}")
        require(math.isfinite(self.max_lr) and self.max_lr > 0,
                f"--max_lr {self.max_lr} is not a positive learning rate", "pass e.g. 6e-4")
        require(math.isfinite(self.min_lr) and self.min_lr >= 0,
                f"--min_lr {self.min_lr} is not a learning rate >= 0", "pass e.g. 6e-5, or 0")
        require(self.min_lr <= self.max_lr, f"--min_lr {self.min_lr} is above --max_lr "
                f"{self.max_lr}", "make --min_lr at most --max_lr")
        require(self.max_steps >= 1, f"--max_steps {self.max_steps} is not a positive number "
                f"of steps", "pass the run's length in optimizer steps")
        require(0 <= self.warmup_steps < self.max_steps, f"--warmup_steps {self.warmup_steps} "
                f"is not in [0, --max_steps {self.max_steps})",
                "use fewer warmup steps (0 for none) or a longer run")

    @property
    def steps_after_warmup(self) -> int:
        return self.max_steps - self.warmup_steps

    def lerp(self, share: float) -> float:
        """min_lr at share 0, max_lr at share 1, in a straight line between."""
        return self.min_lr + (self.max_lr - self.min_lr) * share

    def progress(self, step: int) -> float:
        """How far a curve is through the steps after warmup: 0 at its start, 1 at the end."""
        return min(step / self.steps_after_warmup, 1.0)

    def __call__(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.max_lr * (step + 1) / self.warmup_steps
        if self.clock_starts_after_warmup:
            step -= self.warmup_steps
        return self.lr_at(step)

    def lr_at(self, step: int) -> float:
        raise NotImplementedError

    def observe(self, val_loss: float) -> None:
        """Called with every validation loss; only plateau listens."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        require(not state, f"the checkpoint holds schedule state {sorted(state)}, but "
                f"{self.name} keeps none", "resume with the checkpoint's --lr_schedule")


DROP_FACTOR = 0.1 ** 0.5  # two drops take max_lr to 0.1 * max_lr, the default min_lr


@dataclass
class ConstantLR(Schedule):
    """max_lr after warmup."""
    name = "constant"
    clock_starts_after_warmup = False

    def lr_at(self, step: int) -> float:
        return self.max_lr


@dataclass
class StepLR(Schedule):
    """max_lr * gamma ** (step // step_size), torch's StepLR."""
    gamma: float = param(DROP_FACTOR, "factor applied at each drop")
    step_size: int | None = param(None, "steps between drops, counted from step 0 "
                                        "(default max_steps / 3 rounded up: two drops)")
    name = "step"
    clock_starts_after_warmup = False
    aliases = {"max_iters": "step_size"}

    def __post_init__(self):
        super().__post_init__()
        if self.step_size is None:
            self.step_size = -(-self.max_steps // 3)
        check_factor("gamma", self.gamma)
        require(self.step_size >= 1, f"--step_size {self.step_size} is not a positive number "
                f"of steps", "pass the steps between two drops")
        require(self.step_size >= self.warmup_steps, f"--step_size {self.step_size} puts the "
                f"first drop inside the {self.warmup_steps} warmup steps",
                "use a larger --step_size or fewer --warmup_steps")

    def lr_at(self, step: int) -> float:
        return self.max_lr * self.gamma ** (step // self.step_size)


@dataclass
class MultiStepLR(Schedule):
    """max_lr * gamma ** (number of milestones <= step), torch's MultiStepLR."""
    gamma: float = param(DROP_FACTOR, "factor applied at each drop")
    milestones: list[int] | None = param(None, "optimizer steps at which the LR drops "
                                               "(default 80% and 90% of max_steps, as in "
                                               "DeepSeek LLM)")
    name = "multistep"
    clock_starts_after_warmup = False

    def __post_init__(self):
        super().__post_init__()
        if self.milestones is None:
            self.milestones = [self.max_steps * 8 // 10, self.max_steps * 9 // 10]
        check_factor("gamma", self.gamma)
        require(len(self.milestones) > 0, "--milestones is empty", "pass one or more steps")
        require(min(self.milestones) >= 0, f"--milestones {self.milestones} has a negative "
                f"step", "pass optimizer steps >= 0")
        require(self.milestones == sorted(self.milestones), f"--milestones {self.milestones} "
                f"are not in increasing order", "sort them")
        require(self.milestones[0] >= self.warmup_steps, f"--milestones {self.milestones[0]} "
                f"falls inside the {self.warmup_steps} warmup steps",
                "use later milestones or fewer --warmup_steps")

    def lr_at(self, step: int) -> float:
        return self.max_lr * self.gamma ** bisect.bisect_right(self.milestones, step)


@dataclass
class CosineLR(Schedule):
    """build-nanogpt's cosine: max_lr at warmup's end to min_lr at max_steps, then flat."""
    name = "cosine"

    def lr_at(self, step: int) -> float:
        return self.lerp(half_cosine(self.progress(step)))


@dataclass
class LinearLR(Schedule):
    """A line from max_lr at warmup's end to min_lr at max_steps (min_lr 0: to zero)."""
    name = "linear"

    def lr_at(self, step: int) -> float:
        return self.lerp(1.0 - self.progress(step))


DECAY_SHAPES = {  # fraction x of the decay done -> share of (max_lr - min_lr) left
    "linear": lambda x: 1.0 - x,
    "cosine": half_cosine,
    "sqrt": lambda x: 1.0 - math.sqrt(x),
}


@dataclass
class WSDLR(Schedule):
    """Warmup-stable-decay: max_lr, then to min_lr over the run's last decay_frac."""
    decay_frac: float = param(0.2, "fraction of max_steps spent decaying, at the end")
    decay_shape: str = param("sqrt", "linear, cosine, or sqrt (1 - sqrt(x), llm.c's choice)")
    name = "wsd"
    clock_starts_after_warmup = False

    def __post_init__(self):
        super().__post_init__()
        require(0 < self.decay_frac <= 1, f"--decay_frac {self.decay_frac} is outside (0, 1]",
                "pass the fraction of the run spent decaying, e.g. 0.2")
        require_choice("--decay_shape", self.decay_shape, DECAY_SHAPES)
        require(self.decay_start >= self.warmup_steps, f"the wsd decay starts at step "
                f"{self.decay_start}, inside the {self.warmup_steps} warmup steps",
                "use a smaller --decay_frac or fewer --warmup_steps")

    @property
    def decay_start(self) -> int:
        # llm.c truncates (1 - decay_frac) * max_steps; rounding to 6 places first keeps
        # float noise (0.7 * 10 = 6.9999...) from moving the start a step early.
        start = math.floor(round((1.0 - self.decay_frac) * self.max_steps, 6))
        return min(start, self.max_steps - 1)

    def lr_at(self, step: int) -> float:
        if step < self.decay_start:
            return self.max_lr
        done = min((step - self.decay_start) / (self.max_steps - self.decay_start), 1.0)
        return self.lerp(DECAY_SHAPES[self.decay_shape](done))


@dataclass
class ExponentialLR(Schedule):
    """max_lr * gamma ** (steps after warmup), torch's ExponentialLR."""
    gamma: float | None = param(None, "factor per step (default: reaches min_lr at max_steps)")
    name = "exponential"

    def __post_init__(self):
        super().__post_init__()
        if self.gamma is None:
            require(self.min_lr > 0, "an exponential decay never reaches --min_lr 0",
                    "pass --gamma, or a --min_lr above 0")
            self.gamma = (self.min_lr / self.max_lr) ** (1 / self.steps_after_warmup)
        check_factor("gamma", self.gamma)

    def lr_at(self, step: int) -> float:
        return self.max_lr * self.gamma ** step


@dataclass
class PolynomialLR(Schedule):
    """min_lr + (max_lr - min_lr) * (1 - progress) ** power, PolynomialLR at min_lr 0."""
    power: float = param(2.0, "exponent of the decay (1 is the linear schedule)")
    name = "polynomial"

    def __post_init__(self):
        super().__post_init__()
        require(math.isfinite(self.power) and self.power > 0, f"--power {self.power} is not "
                f"positive", "pass e.g. 2 (quadratic) or 0.5")

    def lr_at(self, step: int) -> float:
        return self.lerp((1.0 - self.progress(step)) ** self.power)


@dataclass
class InverseSqrtLR(Schedule):
    """max_lr * sqrt(warmup_steps / (step + 1)): meets the warmup's end, no floor."""
    name = "inverse_sqrt"
    clock_starts_after_warmup = False

    def lr_at(self, step: int) -> float:
        # With no warmup the decay starts from max_lr at step 0, as after a 1-step warmup.
        return self.max_lr * math.sqrt(max(self.warmup_steps, 1) / (step + 1))


@dataclass
class OneCycleLR(Schedule):
    """torch's OneCycleLR (cos): max_lr / div_factor up to max_lr, then far down; no min_lr."""
    pct_start: float = param(0.3, "fraction of the cycle spent rising to max_lr")
    div_factor: float = param(25.0, "the cycle starts at max_lr / div_factor")
    final_div_factor: float = param(1e4, "the cycle ends at max_lr / div_factor / "
                                         "final_div_factor")
    name = "onecycle"

    def __post_init__(self):
        super().__post_init__()
        require(0 < self.pct_start < 1, f"--pct_start {self.pct_start} is outside (0, 1)",
                "pass e.g. 0.3")
        for name in ("div_factor", "final_div_factor"):
            value = getattr(self, name)
            require(math.isfinite(value) and value > 0, f"--{name} {value} is not positive",
                    f"pass a positive --{name}")
        require(self.peak_step > 0, f"--pct_start {self.pct_start} makes the rise "
                f"{self.peak_step + 1:g} of the {self.steps_after_warmup} steps after warmup, "
                f"not more than 1", "raise --pct_start or --max_steps")

    @property
    def peak_step(self) -> float:
        # torch puts the peak at pct_start * total_steps - 1, which need not be a whole step.
        return self.pct_start * self.steps_after_warmup - 1

    def lr_at(self, step: int) -> float:
        start_lr = self.max_lr / self.div_factor
        last_step = self.steps_after_warmup - 1
        step = min(step, last_step)  # past the cycle the LR stays at its final value
        if step <= self.peak_step:
            rise = half_cosine(step / self.peak_step)
            return self.max_lr + (start_lr - self.max_lr) * rise
        end_lr = start_lr / self.final_div_factor
        fall = half_cosine((step - self.peak_step) / (last_step - self.peak_step))
        return end_lr + (self.max_lr - end_lr) * fall


@dataclass
class CosineRestartsLR(Schedule):
    """SGDR, torch's CosineAnnealingWarmRestarts: cosine cycles from max_lr to min_lr."""
    cycle_steps: int | None = param(None, "steps in the first cycle "
                                          "(default: four cycles fill the run)")
    cycle_mult: int = param(1, "each cycle is this many times longer than the one before")
    name = "cosine_restarts"

    def __post_init__(self):
        super().__post_init__()
        require(self.cycle_mult >= 1, f"--cycle_mult {self.cycle_mult} is below 1",
                "pass a whole number >= 1")
        if self.cycle_steps is None:
            units = sum(self.cycle_mult ** cycle for cycle in range(4))
            self.cycle_steps = -(-self.steps_after_warmup // units)
        require(self.cycle_steps >= 1, f"--cycle_steps {self.cycle_steps} is not a positive "
                f"number of steps", "pass the length of the first cycle")

    def lr_at(self, step: int) -> float:
        position, length = step, self.cycle_steps
        if self.cycle_mult == 1:
            position %= length
        while position >= length:
            position -= length
            length *= self.cycle_mult
        return self.lerp(half_cosine(position / length))


CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


@dataclass
class CyclicLR(Schedule):
    """torch's CyclicLR: triangles from min_lr up to max_lr in cycle_steps, and down."""
    cycle_steps: int | None = param(None, "steps from min_lr up to max_lr, the same back down "
                                          "(default: four cycles fill the run)")
    mode: str = param("triangular", "triangular, triangular2 (the height halves every cycle) "
                                    "or exp_range (height times gamma ** step)")
    gamma: float | None = param(None, "mode exp_range only: height factor per step "
                                      "(default: a tenth left at max_steps)")
    name = "cyclic"

    def __post_init__(self):
        super().__post_init__()
        if self.cycle_steps is None:
            self.cycle_steps = -(-self.steps_after_warmup // 8)
        require(self.cycle_steps >= 1, f"--cycle_steps {self.cycle_steps} is not a positive "
                f"number of steps", "pass the steps of half a cycle")
        require_choice("--mode", self.mode, CYCLIC_MODES)
        if self.mode != "exp_range":
            require(self.gamma is None, f"--gamma is not used by cyclic mode {self.mode}",
                    "remove --gamma, or pass --mode exp_range")
            return
        if self.gamma is None:
            self.gamma = 0.1 ** (1 / self.steps_after_warmup)
        check_factor("gamma", self.gamma)

    def lr_at(self, step: int) -> float:
        cycle_length = 2.0 * self.cycle_steps
        cycle = math.floor(1 + step / cycle_length)  # 1-based, as torch counts
        position = 1.0 + step / cycle_length - cycle  # 0 .. 1 through the cycle
        height = 2.0 * position if position <= 0.5 else 2.0 * (1.0 - position)
        if self.mode == "triangular2":
            height *= 1 / 2.0 ** (cycle - 1)
        elif self.mode == "exp_range":
            height *= self.gamma ** step
        return self.lerp(height)


# torch's ReduceLROnPlateau skips a reduction smaller than this (its `eps`); we keep its rule.
PLATEAU_MIN_CHANGE = 1e-8


@dataclass
class PlateauLR(Schedule):
    """torch's ReduceLROnPlateau: max_lr, times factor when val loss stalls; floor min_lr."""
    factor: float = param(0.5, "LR multiplier when the validation loss stalls")
    patience: int = param(3, "evaluations without improvement tolerated before a reduction")
    threshold: float = param(1e-4, "an improvement counts when loss < best * (1 - threshold)")
    cooldown: int = param(0, "evaluations after a reduction during which stalls are not counted")
    name = "plateau"
    clock_starts_after_warmup = False

    def __post_init__(self):
        super().__post_init__()
        require(0 < self.factor < 1, f"--factor {self.factor} is outside (0, 1)",
                "pass e.g. 0.5")
        require(0 <= self.threshold < 1, f"--threshold {self.threshold} is outside [0, 1)",
                "pass e.g. 1e-4")
        for name in ("patience", "cooldown"):
            require(getattr(self, name) >= 0, f"--{name} {getattr(self, name)} is negative",
                    "pass a number of evaluations >= 0")
        self.current_lr = self.max_lr
        self.best_loss = math.inf
        self.bad_evaluations = 0
        self.cooldown_left = 0

    def lr_at(self, step: int) -> float:
        return self.current_lr

    def observe(self, val_loss: float) -> None:
        """Feed one validation loss; all ranks must pass the same (all-reduced) value."""
        val_loss = float(val_loss)
        if val_loss < self.best_loss * (1 - self.threshold):
            self.best_loss, self.bad_evaluations = val_loss, 0
        else:
            self.bad_evaluations += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_evaluations = 0
        if self.bad_evaluations > self.patience:
            lowered = max(self.current_lr * self.factor, self.min_lr)
            if self.current_lr - lowered > PLATEAU_MIN_CHANGE:
                self.current_lr = lowered
            self.cooldown_left, self.bad_evaluations = self.cooldown, 0

    def state_dict(self) -> dict:
        return {"current_lr": self.current_lr, "best_loss": self.best_loss,
                "bad_evaluations": self.bad_evaluations, "cooldown_left": self.cooldown_left}

    def load_state_dict(self, state: dict) -> None:
        expected = self.state_dict()
        require(set(state) == set(expected), f"the checkpoint's schedule state has keys "
                f"{sorted(state)}, plateau keeps {sorted(expected)}",
                "resume with the checkpoint's --lr_schedule")
        for key, value in state.items():
            setattr(self, key, type(expected[key])(value))


@dataclass
class RangeTestLR(Schedule):
    """LR range test: a geometric ramp, min_lr * (max_lr / min_lr) ** progress."""
    name = "range_test"

    def __post_init__(self):
        super().__post_init__()
        require(self.min_lr > 0, "range_test ramps geometrically from --min_lr, which is 0",
                "pass a small positive --min_lr such as 1e-7")

    def lr_at(self, step: int) -> float:
        return self.min_lr * (self.max_lr / self.min_lr) ** self.progress(step)


SCHEDULES: dict[str, type[Schedule]] = {cls.name: cls for cls in (
    ConstantLR, StepLR, MultiStepLR, CosineLR, LinearLR, WSDLR, ExponentialLR, PolynomialLR,
    InverseSqrtLR, OneCycleLR, CosineRestartsLR, CyclicLR, PlateauLR, RangeTestLR)}
SHARED = [field.name for field in dataclasses.fields(Schedule)]


def own_fields(cls: type[Schedule]) -> list[dataclasses.Field]:
    """The parameters of one schedule beyond the shared four."""
    return [field for field in dataclasses.fields(cls) if field.name not in SHARED]


def schedule_class(name: str) -> type[Schedule]:
    require_choice("schedule", name, SCHEDULES)
    return SCHEDULES[name]


def parameter_users() -> dict[str, list[str]]:
    """Every schedule-specific parameter (and old name) -> the schedules that take it."""
    users: dict[str, list[str]] = {}
    for name, cls in SCHEDULES.items():
        for key in [field.name for field in own_fields(cls)] + list(cls.aliases):
            users.setdefault(key, []).append(name)
    return users


PARAMETER_USERS = parameter_users()


def parameter_field(cls: type[Schedule], key: str) -> dataclasses.Field:
    """The field behind a schedule-specific parameter name or old name."""
    return {field.name: field for field in own_fields(cls)}[cls.aliases.get(key, key)]


def build(name: str, **params) -> Schedule:
    """The schedule `name` with these parameters; None stands for a parameter's default."""
    cls = schedule_class(name)
    given = {key: value for key, value in params.items() if value is not None}
    for old, new in cls.aliases.items():
        if old in given:
            require(new not in given, f"--{old} and --{new} are the same parameter",
                    f"pass only --{new}")
            given[new] = given.pop(old)
    accepted = {field.name for field in dataclasses.fields(cls)}
    for key in given:
        if key in accepted:
            continue
        require_choice("parameter", key, SHARED + list(PARAMETER_USERS))
        raise ScheduleError(f"--{key} is not a parameter of {name} (only of "
                            f"{', '.join(PARAMETER_USERS[key])}); remove it or pick a schedule "
                            f"that takes it")
    return cls(**given)


# ----------------------------------------------------------------------------------------------
# Flags, shared with train_gpt2.py

def flag_help(key: str, users: list[str]) -> str:
    """One flag's help: each schedule's own text, schedules with the same text grouped."""
    texts: dict[str, list[str]] = {}
    for name in users:
        cls = SCHEDULES[name]
        field = parameter_field(cls, key)
        text = field.metadata["help"]
        if key in cls.aliases:
            text = f"old name of --{field.name}"
        elif field.default is not None:
            text += f" (default {format_value(field.default)})"
        texts.setdefault(text, []).append(name)
    joined = "; ".join(f"{', '.join(names)}: {text}" for text, names in texts.items())
    return joined.replace("%", "%%")  # argparse formats help with %


def add_schedule_args(parser) -> None:
    """Add --lr_schedule and a flag per schedule parameter to a parser or argument group."""
    parser.add_argument("--lr_schedule", default="cosine", metavar="NAME",
                       help=f"one of {', '.join(SCHEDULES)} (default %(default)s)")
    for field in dataclasses.fields(Schedule):
        default = "" if field.default is None else " (default %(default)s)"
        parser.add_argument(f"--{field.name}", type=field_kind(field)[0], default=field.default,
                            help=field.metadata["help"] + default)
    # Schedule-specific flags stay None unless given, so a flag the chosen schedule does
    # not use is refused instead of silently ignored.
    for key, users in PARAMETER_USERS.items():
        kind, is_list = field_kind(parameter_field(SCHEDULES[users[0]], key))
        parser.add_argument(f"--{key}", type=kind, nargs="+" if is_list else None, default=None,
                            help=flag_help(key, users))


def schedule_from_args(args: argparse.Namespace) -> Schedule:
    """The schedule chosen by the flags add_schedule_args added (raises ScheduleError)."""
    keys = SHARED + list(PARAMETER_USERS)
    return build(args.lr_schedule, **{key: getattr(args, key) for key in keys})


# ----------------------------------------------------------------------------------------------
# Command line: --list and --plot

def params_for(cls: type[Schedule], args: argparse.Namespace) -> dict:
    """The flags in `args` that schedule `cls` takes: the shared ones and its own."""
    keys = SHARED + [field.name for field in own_fields(cls)] + list(cls.aliases)
    return {key: getattr(args, key) for key in keys}


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return "unused" if value is None else str(value)


def describe_schedules(args: argparse.Namespace) -> str:
    """Every schedule, its formula, and its parameters as these flags resolve them."""
    shared = build("constant", **{key: getattr(args, key) for key in SHARED})
    lines = ["shared by every schedule: " + "  ".join(
        f"--{key} {format_value(getattr(shared, key))}" for key in SHARED),
        "warmup: max_lr * (step + 1) / warmup_steps for step < warmup_steps, then",
        "progress: (step - warmup_steps) / (max_steps - warmup_steps), at most 1", ""]
    for name, cls in SCHEDULES.items():
        lines.append(f"{name:<16}{cls.__doc__.splitlines()[0].rstrip('.')}")
        try:
            schedule = build(name, **params_for(cls, args))
        except ScheduleError as error:
            lines.append(f"{'':16}not valid with these flags: {error}")
            continue
        own = [f"--{field.name} {format_value(getattr(schedule, field.name))}"
               for field in own_fields(cls)]
        own += [f"(--{old} = --{new})" for old, new in cls.aliases.items()]
        if own:
            lines.append(f"{'':16}" + "  ".join(own))
    return "\n".join(lines)


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def schedules_to_plot(names: list[str], args: argparse.Namespace) -> list[Schedule]:
    """The named schedules, each with the flags it takes; a flag none of them takes is refused."""
    classes = {name: schedule_class(name) for name in names}
    for key, users in PARAMETER_USERS.items():
        require(getattr(args, key) is None or set(users) & set(classes),
                f"--{key} is not a parameter of {', '.join(classes)} (only of "
                f"{', '.join(users)})", "remove it or plot one of those schedules")
    return [build(name, **params_for(cls, args)) for name, cls in classes.items()]


def figure_format(path: Path) -> str:
    file_format = path.suffix.lstrip(".").lower()
    require(file_format in ("png", "pdf", "svg"), f"cannot draw a {path.suffix or 'suffix-less'}"
            f" figure", "name the output .png, .pdf or .svg")
    return file_format


def draw_schedules(schedules: list[Schedule], file_format: str) -> bytes:
    """The figure of each schedule's LR against the step, over the run, as file bytes."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(10, 5.5))
    steps = range(schedules[0].max_steps)
    for index, schedule in enumerate(schedules):
        label = schedule.name + (" (no val loss here: flat)" if schedule.name == "plateau" else "")
        axes.plot(steps, [schedule(step) for step in steps], label=label, linewidth=1.4,
                  linestyle=["-", "--", ":"][index // 10 % 3])
    axes.set(xlabel="optimizer step", ylabel="learning rate",
             title=f"learning-rate schedules, {schedules[0].max_steps} steps, "
                   f"{schedules[0].warmup_steps} warmup")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the curves, not on them
    buffer = io.BytesIO()
    figure.savefig(buffer, format=file_format, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def plot_schedules(names: list[str], args: argparse.Namespace, path: Path) -> Path:
    """Draw the LR of each named schedule against the step into `path` (png, pdf or svg)."""
    schedules = schedules_to_plot(names, args)
    write_atomically(path, draw_schedules(schedules, figure_format(path)))
    return path


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one `error: ...` line, exit code 2."""

    def error(self, message):
        self.exit(2, f"error: {message}; see `python schedulers.py --help`\n")


def main(argv=None) -> int:
    parser = OneLineParser(description=__doc__, allow_abbrev=False,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--list", action="store_true",
                        help="print every schedule with its parameters and defaults")
    parser.add_argument("--plot", nargs="+", metavar="NAME",
                        help="draw these schedules' LR against the step")
    parser.add_argument("-o", "--output", default="lr_schedules.png",
                        help="figure written by --plot (default %(default)s)")
    add_schedule_args(parser.add_argument_group("learning-rate schedule"))
    args = parser.parse_args(argv)
    try:
        if args.list:
            print(describe_schedules(args))
        elif args.plot:
            names = list(dict.fromkeys(args.plot))  # each once, in the order given
            print(f"wrote {plot_schedules(names, args, Path(args.output))}")
        else:
            raise ScheduleError("nothing to do; pass --list, or --plot NAME [NAME ...]")
    except ScheduleError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot write {args.output} ({error.strerror or error}); "
              f"choose another -o path", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
