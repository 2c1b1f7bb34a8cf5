"""schedulers.py: each schedule beside the torch scheduler it names, its errors, and its CLI."""
import argparse
import dataclasses
import io
import json
import math
import random
import warnings

import numpy as np
import pytest
import torch
from torch.optim import lr_scheduler as torch_lr

import schedulers
from conftest import run_script
from schedulers import ScheduleError, build

MAX_LR, MIN_LR = 6e-4, 6e-5
STEPS = 10_000  # every torch comparison covers at least this many optimizer steps
WARMUP = 600


def torch_lrs(make_scheduler, steps: int) -> np.ndarray:
    """The LR torch's scheduler sets for each of `steps` optimizer steps, on a dummy SGD."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=MAX_LR)
    scheduler = make_scheduler(optimizer)
    lrs = []
    with warnings.catch_warnings():
        # No gradients exist, so optimizer.step() is skipped; torch only warns about that.
        warnings.simplefilter("ignore")
        for _ in range(steps):
            lrs.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    return np.array(lrs)


def our_lrs(schedule, steps: int) -> np.ndarray:
    return np.array([schedule(step) for step in range(steps)])


def assert_relative_error(ours: np.ndarray, theirs: np.ndarray, tolerance: float = 1e-12):
    assert len(ours) == len(theirs)
    wrong = np.abs(ours - theirs) > tolerance * np.abs(theirs)
    first = int(np.argmax(wrong))
    assert not wrong.any(), f"step {first}: ours {ours[first]!r}, reference {theirs[first]!r}"


WARMUP_LRS = MAX_LR * (np.arange(WARMUP) + 1) / WARMUP  # the warmup formula


# ----------------------------------------------------------------------------------------------
# Equal to torch
# StepLR, MultiStepLR, ExponentialLR, PolynomialLR, CosineAnnealingLR and LinearLR set each LR
# from the previous one (a running product); we compare against those values, the ones torch
# really uses. Their rounding drift measured at most 2e-13 relative over 10k steps, so it
# needs no allowance beyond 1e-12. OneCycleLR, CyclicLR and CosineAnnealingWarmRestarts
# compute every LR afresh.

NO_WARMUP_CASES = {  # id -> (schedule name, its parameters, the torch scheduler)
    "step": ("step", dict(step_size=700, gamma=0.5),
             lambda opt: torch_lr.StepLR(opt, step_size=700, gamma=0.5)),
    "multistep": ("multistep", dict(milestones=[1000, 2500, 2500, 7000], gamma=0.3),
                  lambda opt: torch_lr.MultiStepLR(opt, [1000, 2500, 2500, 7000], gamma=0.3)),
    "exponential": ("exponential", dict(gamma=0.9995),
                    lambda opt: torch_lr.ExponentialLR(opt, gamma=0.9995)),
    "polynomial": ("polynomial", dict(min_lr=0.0, power=1.7),
                   lambda opt: torch_lr.PolynomialLR(opt, total_iters=STEPS, power=1.7)),
    "onecycle": ("onecycle", dict(pct_start=0.25, div_factor=20.0, final_div_factor=500.0),
                 lambda opt: torch_lr.OneCycleLR(
                     opt, MAX_LR, total_steps=STEPS, pct_start=0.25, div_factor=20.0,
                     final_div_factor=500.0, anneal_strategy="cos", cycle_momentum=False)),
    "cosine_restarts": ("cosine_restarts", dict(cycle_steps=700),
                        lambda opt: torch_lr.CosineAnnealingWarmRestarts(
                            opt, T_0=700, eta_min=MIN_LR)),
    "cosine_restarts_mult2": ("cosine_restarts", dict(cycle_steps=300, cycle_mult=2),
                              lambda opt: torch_lr.CosineAnnealingWarmRestarts(
                                  opt, T_0=300, T_mult=2, eta_min=MIN_LR)),
    "cyclic_triangular": ("cyclic", dict(cycle_steps=450),
                          lambda opt: torch_lr.CyclicLR(opt, MIN_LR, MAX_LR, step_size_up=450,
                                                        cycle_momentum=False)),
    "cyclic_triangular2": ("cyclic", dict(cycle_steps=450, mode="triangular2"),
                           lambda opt: torch_lr.CyclicLR(
                               opt, MIN_LR, MAX_LR, step_size_up=450, mode="triangular2",
                               cycle_momentum=False)),
    "cyclic_exp_range": ("cyclic", dict(cycle_steps=450, mode="exp_range", gamma=0.9998),
                         lambda opt: torch_lr.CyclicLR(
                             opt, MIN_LR, MAX_LR, step_size_up=450, mode="exp_range",
                             gamma=0.9998, cycle_momentum=False)),
}


@pytest.mark.parametrize("case", NO_WARMUP_CASES)
def test_without_warmup_every_torch_named_schedule_equals_torch(case):
    name, params, make_torch = NO_WARMUP_CASES[case]
    params = dict(dict(max_lr=MAX_LR, min_lr=MIN_LR, warmup_steps=0, max_steps=STEPS), **params)
    schedule = build(name, **params)
    # PolynomialLR holds its end value after total_iters; check that stretch too. OneCycleLR
    # refuses to step past total_steps, so it is compared over the run itself.
    steps = STEPS + 500 if name == "polynomial" else STEPS
    assert_relative_error(our_lrs(schedule, steps), torch_lrs(make_torch, steps))


def with_warmup(make_torch):
    """torch's own way to put a warmup before a scheduler: SequentialLR switching at WARMUP."""
    def make(optimizer):
        warmup = torch_lr.LambdaLR(optimizer, lambda step: (step + 1) / WARMUP)
        return torch_lr.SequentialLR(optimizer, [warmup, make_torch(optimizer)], [WARMUP])
    return make


CURVE_CASES = {  # after warmup the curve restarts its clock and fits in STEPS more steps
    "cosine": ("cosine", {}, lambda opt: torch_lr.CosineAnnealingLR(
        opt, T_max=STEPS, eta_min=MIN_LR)),
    "linear": ("linear", dict(min_lr=0.0), lambda opt: torch_lr.LinearLR(
        opt, start_factor=1.0, end_factor=0.0, total_iters=STEPS)),
    "exponential": ("exponential", dict(gamma=0.9998),
                    lambda opt: torch_lr.ExponentialLR(opt, gamma=0.9998)),
    "polynomial": ("polynomial", dict(min_lr=0.0, power=0.5),
                   lambda opt: torch_lr.PolynomialLR(opt, total_iters=STEPS, power=0.5)),
    "onecycle": ("onecycle", {}, lambda opt: torch_lr.OneCycleLR(
        opt, MAX_LR, total_steps=STEPS, cycle_momentum=False)),
    "cosine_restarts": ("cosine_restarts", dict(cycle_steps=700, cycle_mult=2),
                        lambda opt: torch_lr.CosineAnnealingWarmRestarts(
                            opt, T_0=700, T_mult=2, eta_min=MIN_LR)),
    "cyclic": ("cyclic", dict(cycle_steps=800, mode="triangular2"),
               lambda opt: torch_lr.CyclicLR(opt, MIN_LR, MAX_LR, step_size_up=800,
                                             mode="triangular2", cycle_momentum=False)),
}


@pytest.mark.parametrize("case", CURVE_CASES)
def test_curves_after_warmup_equal_torch_sequential_lr_of_warmup_then_scheduler(case):
    name, params, make_torch = CURVE_CASES[case]
    params = dict(dict(max_lr=MAX_LR, min_lr=MIN_LR, warmup_steps=WARMUP,
                       max_steps=WARMUP + STEPS), **params)
    schedule = build(name, **params)
    # Cosine is compared up to max_steps, where torch's curve turns back up and ours stays
    # at min_lr; linear also past it, where both hold.
    steps = {"cosine": WARMUP + STEPS + 1, "linear": WARMUP + STEPS + 300}.get(
        name, WARMUP + STEPS)
    ours = our_lrs(schedule, steps)
    assert_relative_error(ours, torch_lrs(with_warmup(make_torch), steps))
    assert_relative_error(ours[:WARMUP], WARMUP_LRS)


STEP_CASES = {
    "step": ("step", dict(step_size=700, gamma=0.5),
             lambda opt: torch_lr.StepLR(opt, step_size=700, gamma=0.5)),
    "multistep": ("multistep", dict(milestones=[WARMUP, 4000, 9000], gamma=0.2),
                  lambda opt: torch_lr.MultiStepLR(opt, [WARMUP, 4000, 9000], gamma=0.2)),
}


@pytest.mark.parametrize("case", STEP_CASES)
def test_step_schedules_keep_their_drops_at_the_same_optimizer_steps_after_warmup(case):
    name, params, make_torch = STEP_CASES[case]
    schedule = build(name, max_lr=MAX_LR, warmup_steps=WARMUP, max_steps=STEPS + WARMUP,
                     **params)
    ours, theirs = our_lrs(schedule, STEPS + WARMUP), torch_lrs(make_torch, STEPS + WARMUP)
    assert_relative_error(ours[:WARMUP], WARMUP_LRS)
    assert_relative_error(ours[WARMUP:], theirs[WARMUP:])


def plateau_val_losses(count: int) -> list[float]:
    """A loss curve that flattens into noise, so the plateau rule fires many times."""
    rng = random.Random(0)
    return [3.0 + 2.0 * math.exp(-i / 1500) + rng.gauss(0, 0.01) for i in range(count)]


PLATEAU_PARAMS = dict(factor=0.7, patience=5, threshold=1e-3, cooldown=2)


@pytest.mark.parametrize("max_lr, min_lr", [
    (MAX_LR, 1e-5),  # reduced many times, down to the min_lr floor
    (1e-7, 0.0),  # stopped above 0 by torch's rule that skips changes under 1e-8
])
def test_plateau_lowers_lr_exactly_like_reduce_lr_on_plateau_fed_the_same_losses(max_lr,
                                                                                  min_lr):
    schedule = build("plateau", max_lr=max_lr, min_lr=min_lr, warmup_steps=0,
                     max_steps=STEPS, **PLATEAU_PARAMS)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=max_lr)
    reference = torch_lr.ReduceLROnPlateau(optimizer, mode="min", threshold_mode="rel",
                                           min_lr=min_lr, **PLATEAU_PARAMS)
    ours, theirs = [], []
    for val_loss in plateau_val_losses(STEPS):
        schedule.observe(val_loss)
        reference.step(val_loss)
        ours.append(schedule(STEPS // 2))
        theirs.append(optimizer.param_groups[0]["lr"])
    assert_relative_error(np.array(ours), np.array(theirs))
    assert len(set(theirs)) > 4
    lowest, next_cut = min(theirs), min(theirs) * (1 - PLATEAU_PARAMS["factor"])
    assert lowest == min_lr if min_lr else 0 < next_cut < 1e-8


def test_plateau_resumed_from_its_saved_state_matches_an_uninterrupted_run():
    losses = plateau_val_losses(4000)
    params = dict(max_lr=MAX_LR, min_lr=1e-6, warmup_steps=10, max_steps=100,
                  **PLATEAU_PARAMS)
    uninterrupted = build("plateau", **params)
    expected = []
    for val_loss in losses:
        uninterrupted.observe(val_loss)
        expected.append(uninterrupted(50))
    first = build("plateau", **params)
    for val_loss in losses[:2500]:
        first.observe(val_loss)
    buffer = io.BytesIO()  # the trainer's checkpoint path: torch.save, weights_only load
    torch.save({"config": dataclasses.asdict(first), "state": first.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = build("plateau", **checkpoint["config"])
    resumed.load_state_dict(checkpoint["state"])
    assert resumed(5) == MAX_LR * 6 / 10  # warmup is untouched by the state
    resumed_lrs = []
    for val_loss in losses[2500:]:
        resumed.observe(val_loss)
        resumed_lrs.append(resumed(50))
    assert resumed_lrs == expected[2500:]
    assert len(set(expected)) > 3


# ----------------------------------------------------------------------------------------------
# Every schedule

@pytest.mark.parametrize("name", schedulers.SCHEDULES)
def test_every_schedule_shares_the_warmup_and_is_a_pure_function_of_the_step(name):
    schedule = build(name, max_lr=MAX_LR, warmup_steps=WARMUP, max_steps=3000)
    assert schedule.name == name
    lrs = our_lrs(schedule, 3001)
    assert_relative_error(lrs[:WARMUP], WARMUP_LRS)
    assert np.isfinite(lrs).all() and (lrs > 0).all()
    order = list(range(3001))
    random.Random(1).shuffle(order)
    assert [schedule(step) for step in order] == [lrs[step] for step in order]
    if name != "plateau":
        schedule.observe(1.0)
        schedule.load_state_dict(schedule.state_dict())
        assert schedule.state_dict() == {}
        assert list(our_lrs(schedule, 3001)) == list(lrs)


@pytest.mark.parametrize("name", schedulers.SCHEDULES)
def test_parameters_survive_the_log_and_checkpoint_round_trip(name):
    schedule = build(name, warmup_steps=100, max_steps=2000)
    record = json.loads(json.dumps(dataclasses.asdict(schedule)))  # the log's # config line
    again = build(name, **record)
    assert again == schedule and dataclasses.asdict(again) == record
    assert our_lrs(again, 2000).tolist() == our_lrs(schedule, 2000).tolist()


@pytest.mark.parametrize("name", ["constant", "step", "multistep", "cosine", "linear", "wsd",
                                  "exponential", "polynomial", "cosine_restarts", "plateau"])
def test_schedules_that_start_at_max_lr_continue_the_warmup_without_a_jump(name):
    schedule = build(name, max_lr=MAX_LR, warmup_steps=WARMUP, max_steps=5000)
    assert schedule(WARMUP - 1) == pytest.approx(MAX_LR, rel=1e-15)
    assert schedule(WARMUP) == pytest.approx(MAX_LR, rel=1e-12)


def test_cosine_runs_from_max_lr_at_warmup_end_to_min_lr_at_max_steps_then_stays():
    schedule = build("cosine", max_lr=MAX_LR, min_lr=MIN_LR, warmup_steps=100, max_steps=1100)
    lrs = our_lrs(schedule, 1100)
    assert schedule(600) == pytest.approx((MAX_LR + MIN_LR) / 2, rel=1e-12)
    assert schedule(1100) == MIN_LR and schedule(5000) == MIN_LR
    assert (np.diff(lrs[100:]) < 0).all()


def test_linear_with_min_lr_zero_decays_to_zero():
    schedule = build("linear", max_lr=MAX_LR, min_lr=0.0, warmup_steps=100, max_steps=1100)
    assert schedule(600) == pytest.approx(MAX_LR / 2, rel=1e-12)
    assert schedule(1100) == 0.0 and schedule(2000) == 0.0


def test_polynomial_falls_from_max_lr_to_min_lr_with_its_power():
    schedule = build("polynomial", max_lr=MAX_LR, min_lr=MIN_LR, warmup_steps=100,
                     max_steps=1100, power=2.0)
    assert schedule(600) == pytest.approx(MIN_LR + 0.25 * (MAX_LR - MIN_LR), rel=1e-12)
    assert schedule(1100) == MIN_LR and schedule(3000) == MIN_LR


def llmc_wsd(step: int, max_steps: int, warmup_steps: int, max_lr: float, final_frac: float):
    """llm.c's wsd in float32 as it computes it: decay from int(0.8f * T), 1 - sqrt shape."""
    f32 = np.float32
    decay_start = int(f32(0.8) * f32(max_steps))
    if step < warmup_steps:
        return f32(max_lr) * (f32(step + 1) / f32(warmup_steps))
    if step < decay_start:
        return f32(max_lr)
    done = f32(step - decay_start) / f32(max_steps - decay_start)
    min_lr = f32(max_lr) * f32(final_frac)
    return min_lr + (f32(1) - np.sqrt(done)) * (f32(max_lr) - min_lr)


@pytest.mark.parametrize("max_steps", [1000, 12_345, 19_073])
def test_wsd_with_decay_frac_02_and_sqrt_reproduces_llmc_wsd(max_steps):
    schedule = build("wsd", max_lr=MAX_LR, min_lr=0.0, warmup_steps=700, max_steps=max_steps,
                     decay_frac=0.2, decay_shape="sqrt")
    reference = np.array([llmc_wsd(step, max_steps, 700, MAX_LR, 0.0)
                          for step in range(max_steps)], dtype=np.float64)
    ours = our_lrs(schedule, max_steps)
    assert schedule.decay_start == int(np.float32(0.8) * np.float32(max_steps))
    # float32 rounding, magnified where 1 - sqrt(x) cancels near the end, stays under 1e-6.
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6 * MAX_LR)


def test_wsd_decay_start_matches_llmc_for_every_run_length_up_to_5000_and_some_longer():
    lengths = [*range(1, 5001), 19_073, 123_457, 1_000_003]
    starts = [build("wsd", warmup_steps=0, max_steps=steps).decay_start for steps in lengths]
    assert starts == [int(np.float32(0.8) * np.float32(steps)) for steps in lengths]


@pytest.mark.parametrize("shape, midpoint", [("linear", 0.5), ("cosine", 0.5),
                                             ("sqrt", 1 - math.sqrt(0.5))])
def test_wsd_holds_max_lr_then_decays_with_its_shape_to_min_lr(shape, midpoint):
    schedule = build("wsd", max_lr=MAX_LR, min_lr=MIN_LR, warmup_steps=100, max_steps=1000,
                     decay_frac=0.4, decay_shape=shape)
    assert schedule.decay_start == 600
    assert all(schedule(step) == MAX_LR for step in range(100, 600))
    assert schedule(800) == pytest.approx(MIN_LR + midpoint * (MAX_LR - MIN_LR), rel=1e-12)
    assert schedule(1000) == pytest.approx(MIN_LR, rel=1e-12)


def test_inverse_sqrt_meets_the_warmup_and_decays_as_one_over_sqrt_step():
    schedule = build("inverse_sqrt", max_lr=MAX_LR, warmup_steps=400, max_steps=10_000)
    assert schedule(399) == pytest.approx(MAX_LR, rel=1e-15)
    assert schedule(1599) == pytest.approx(MAX_LR / 2, rel=1e-12)  # sqrt(400 / 1600)
    no_warmup = build("inverse_sqrt", max_lr=MAX_LR, warmup_steps=0, max_steps=10_000)
    assert no_warmup(0) == MAX_LR and no_warmup(99) == pytest.approx(MAX_LR / 10, rel=1e-12)


def test_range_test_ramps_geometrically_from_min_lr_to_max_lr_over_the_run():
    schedule = build("range_test", max_lr=1e-2, min_lr=1e-6, warmup_steps=0, max_steps=4000)
    assert schedule(0) == 1e-6
    assert schedule(2000) == pytest.approx(1e-4, rel=1e-12)
    assert schedule(4000) == pytest.approx(1e-2, rel=1e-12)
    assert (np.diff(np.log(our_lrs(schedule, 4000)), 2) == pytest.approx(0, abs=1e-12))


@pytest.mark.parametrize("max_steps", [1000, 19_073, 100_000])
def test_run_length_defaults_scale_with_max_steps(max_steps):
    def default(name):
        return build(name, max_lr=MAX_LR, warmup_steps=0, max_steps=max_steps)
    step = default("step")
    assert 2 * step.step_size < max_steps <= 3 * step.step_size  # two drops
    assert step(max_steps - 1) == pytest.approx(0.1 * MAX_LR, rel=1e-12)  # the default min_lr
    multistep = default("multistep")
    assert multistep.milestones == [max_steps * 8 // 10, max_steps * 9 // 10]
    assert multistep(max_steps - 1) == pytest.approx(0.1 * MAX_LR, rel=1e-12)
    assert default("exponential")(max_steps) == pytest.approx(0.1 * MAX_LR, rel=1e-9)
    restarts = default("cosine_restarts")
    assert 3 * restarts.cycle_steps < max_steps <= 4 * restarts.cycle_steps
    cyclic = default("cyclic")
    assert 3 * 2 * cyclic.cycle_steps < max_steps <= 4 * 2 * cyclic.cycle_steps
    exp_range = build("cyclic", warmup_steps=0, max_steps=max_steps, mode="exp_range")
    assert exp_range.gamma ** max_steps == pytest.approx(0.1, rel=1e-9)


def test_max_iters_is_the_old_name_of_step_size():
    assert build("step", max_iters=500, warmup_steps=0) == build("step", step_size=500,
                                                                  warmup_steps=0)


# ----------------------------------------------------------------------------------------------
# Bad values

BAD_VALUES = {  # id -> (name, parameters, words the one-line message must hold)
    "unknown name": ("cosin", {}, "did you mean 'cosine'"),
    "unknown name, no match": ("zzz", {}, "choose one of constant, step"),
    "zero max_lr": ("cosine", dict(max_lr=0.0), "--max_lr 0.0"),
    "negative min_lr": ("cosine", dict(min_lr=-1e-5), "--min_lr -1e-05"),
    "nan max_lr": ("cosine", dict(max_lr=math.nan), "--max_lr nan"),
    "min above max": ("linear", dict(max_lr=1e-4, min_lr=2e-4), "is above --max_lr"),
    "gamma zero": ("step", dict(gamma=0.0), "--gamma 0.0 is outside (0, 1]"),
    "gamma above one": ("exponential", dict(gamma=1.01), "--gamma 1.01 is outside (0, 1]"),
    "empty milestones": ("multistep", dict(milestones=[]), "--milestones is empty"),
    "unsorted milestones": ("multistep", dict(milestones=[5000, 3000]), "increasing order"),
    "negative milestone": ("multistep", dict(milestones=[-1, 3000]), "negative"),
    "milestone in warmup": ("multistep", dict(milestones=[500]), "inside the 715 warmup"),
    "step in warmup": ("step", dict(step_size=500), "inside the 715 warmup"),
    "warmup >= max_steps": ("cosine", dict(warmup_steps=100, max_steps=100),
                            "--warmup_steps 100 is not in [0, --max_steps 100)"),
    "negative warmup": ("cosine", dict(warmup_steps=-1), "--warmup_steps -1"),
    "decay_frac zero": ("wsd", dict(decay_frac=0.0), "--decay_frac 0.0 is outside (0, 1]"),
    "decay_frac above one": ("wsd", dict(decay_frac=1.5), "--decay_frac 1.5"),
    "decay in warmup": ("wsd", dict(decay_frac=1.0), "inside the 715 warmup"),
    "decay_shape": ("wsd", dict(decay_shape="sqr"), "did you mean 'sqrt'"),
    "cyclic mode": ("cyclic", dict(mode="triangle"), "did you mean 'triangular'"),
    "unused parameter": ("cosine", dict(decay_frac=0.2), "not a parameter of cosine"),
    "unused gamma in mode": ("cyclic", dict(gamma=0.9), "not used by cyclic mode triangular"),
    "unknown parameter": ("step", dict(gama=0.5), "did you mean 'gamma'"),
    "old and new name": ("step", dict(max_iters=900, step_size=900), "same parameter"),
    "float steps": ("cosine", dict(max_steps=1000.5), "--max_steps must be a whole number"),
    "text lr": ("cosine", dict(max_lr="big"), "--max_lr must be a number"),
    "min_lr 0 for exponential": ("exponential", dict(min_lr=0.0), "never reaches --min_lr 0"),
    "min_lr 0 for range_test": ("range_test", dict(min_lr=0.0), "--min_lr, which is 0"),
    "onecycle rise too short": ("onecycle", dict(pct_start=0.0001, warmup_steps=0,
                                                 max_steps=5000), "raise --pct_start"),
    "plateau factor": ("plateau", dict(factor=1.0), "--factor 1.0 is outside (0, 1)"),
    "polynomial power": ("polynomial", dict(power=0.0), "--power 0.0"),
    "restart mult": ("cosine_restarts", dict(cycle_mult=0), "--cycle_mult 0"),
}


@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_values_raise_one_line_schedule_error_naming_problem_and_fix(case):
    name, params, words = BAD_VALUES[case]
    with pytest.raises(ScheduleError) as raised:
        build(name, **params)
    message = str(raised.value)
    assert words in message
    assert "\n" not in message and "; " in message


def test_a_stateless_schedule_refuses_state_from_a_stateful_one():
    with pytest.raises(ScheduleError, match="resume with the checkpoint's --lr_schedule"):
        build("cosine").load_state_dict(build("plateau").state_dict())
    with pytest.raises(ScheduleError, match="resume with the checkpoint's --lr_schedule"):
        build("plateau").load_state_dict({"step": 3})


# ----------------------------------------------------------------------------------------------
# Flags for train_gpt2.py

def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    schedulers.add_schedule_args(parser.add_argument_group("schedule"))
    return parser.parse_args(argv)


def test_flags_default_to_build_nanogpt_cosine():
    schedule = schedulers.schedule_from_args(parse())
    assert schedule == schedulers.CosineLR(max_lr=6e-4, min_lr=6e-5, warmup_steps=715,
                                           max_steps=19073)


def test_flags_reach_the_chosen_schedule_and_shared_flags_reach_every_one():
    schedule = schedulers.schedule_from_args(parse(
        "--lr_schedule", "multistep", "--milestones", "300", "600", "--gamma", "0.5",
        "--max_steps", "1000", "--warmup_steps", "100", "--min_lr", "0"))
    assert dataclasses.asdict(schedule) == dict(max_lr=6e-4, min_lr=0.0, warmup_steps=100,
                                                max_steps=1000, gamma=0.5,
                                                milestones=[300, 600])
    for name in schedulers.SCHEDULES:
        if name not in ("exponential", "range_test"):  # these need min_lr > 0
            schedulers.schedule_from_args(parse("--lr_schedule", name, "--min_lr", "0",
                                                "--max_steps", "1000", "--warmup_steps", "10"))


def test_a_flag_the_chosen_schedule_does_not_use_is_refused():
    with pytest.raises(ScheduleError, match="--decay_frac is not a parameter of cosine"):
        schedulers.schedule_from_args(parse("--decay_frac", "0.3"))
    with pytest.raises(ScheduleError, match="--max_iters is not a parameter of multistep"):
        schedulers.schedule_from_args(parse("--lr_schedule", "multistep", "--max_iters", "9"))


def test_every_parameter_of_every_schedule_has_a_flag():
    options = {action.dest for action in argparse.ArgumentParser()._actions}
    parser = argparse.ArgumentParser()
    schedulers.add_schedule_args(parser)
    flags = {action.dest for action in parser._actions} - options
    parameters = {field.name for cls in schedulers.SCHEDULES.values()
                  for field in dataclasses.fields(cls)}
    assert flags == parameters | {"lr_schedule", "max_iters"}


# ----------------------------------------------------------------------------------------------
# The command line

def test_cli_list_prints_every_schedule_with_defaults_for_the_given_run_length():
    result = run_script("schedulers.py", "--list", "--max_steps", "1000", "--warmup_steps", "0")
    assert result.returncode == 0, result.stderr
    for name in schedulers.SCHEDULES:
        assert f"\n{name} " in result.stdout
    assert "--step_size 334" in result.stdout and "--milestones 800 900" in result.stdout


def test_cli_plot_writes_the_figure_atomically(tmp_path):
    output = tmp_path / "figures" / "lr.png"
    result = run_script("schedulers.py", "--plot", "cosine", "step", "multistep", "wsd",
                        "--max_steps", "2000", "--warmup_steps", "100", "--decay_frac", "0.3",
                        "-o", output)
    assert result.returncode == 0, result.stderr
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [path.name for path in output.parent.iterdir()] == ["lr.png"]  # no temporary left


@pytest.mark.parametrize("argv, words", [
    (["--plot", "cosin"], "did you mean 'cosine'"),
    (["--plot", "cosine", "--decay_frac", "0.3"], "--decay_frac is not a parameter of cosine"),
    (["--plot", "linear", "--min_lr", "1", "--max_lr", "0.1"], "is above --max_lr"),
    (["--list", "--max_lr", "abc"], "invalid float value"),
    (["--list", "--warmup_steps", "2000", "--max_steps", "1000"], "--warmup_steps 2000"),
    (["--plot", "cosine", "-o", "lr.xyz"], "cannot draw a .xyz figure"),
    ([], "nothing to do"),
])
def test_cli_bad_input_ends_in_one_error_line_and_exit_code_2(argv, words, tmp_path):
    result = run_script("schedulers.py", *argv, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert words in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cli_plot_into_an_unwritable_place_ends_in_one_error_line(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    result = run_script("schedulers.py", "--plot", "cosine", "--max_steps", "100",
                        "--warmup_steps", "10", "-o", tmp_path / "taken" / "lr.png")
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot write ") and result.stderr.count("\n") == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["taken"]
