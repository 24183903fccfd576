"""The cost-aware sub-block width (``DiffusionParams(sub_block_size="auto")``).

The step-cost model and the choice rule on their own, then through the Engine: every request's
tokens equal the reference decoder's given the widths the engine chose (the trace), and where
the choice is forced by the prices, the widths are the expected ones.
"""
from __future__ import annotations

import itertools

import pytest
import test_scheduler
from reference_dlm import reference_ar, reference_dlm
from test_scheduler import EOS, MASK, assert_idle, prompt, run_all

from wrinklefree_rt import DiffusionParams, Engine, SamplingParams
from wrinklefree_rt.cli import sub_block_size_arg
from wrinklefree_rt.errors import InvalidRequestError
from wrinklefree_rt.step_costs import StepCosts
from wrinklefree_rt.sub_block import CommitRates, choose_sub_block

# The scheduler tests' fixtures: both backends, their tiny model and its directory.
anyio_backend, model, model_dir = test_scheduler.anyio_backend, test_scheduler.model, test_scheduler.model_dir


def recording_engine(model_dir, **config):
    """An engine that keeps every sequence it makes (``.sequences``), for their width traces."""
    eng = Engine.from_pretrained(model_dir, lm_head="fp32", max_num_seqs=64, **config)
    eng.sequences = []
    make = eng._intake.make_sequence

    def recording(*args):
        seq = make(*args)
        eng.sequences.append(seq)
        return seq

    eng._intake.make_sequence = recording
    return eng


# ----- the cost model ----------------------------------------------------------------------------
def test_step_costs_interpolate_and_extrapolate_optimistically():
    c = StepCosts({2: 1.0, 8: 4.0})
    assert c.cost(2) == 1.0 and c.cost(8) == 4.0
    assert c.cost(5) == pytest.approx(2.5)   # linear between measured sizes
    assert c.cost(1) == pytest.approx(0.5)   # below: in proportion to the rows
    assert c.cost(64) == 4.0                 # above: the largest measurement's cost
    assert StepCosts().cost(5) == 0.0


def test_step_costs_average_per_bucket_and_frozen_tables_stay():
    c = StepCosts()
    c.observe(3, 1.0)
    c.observe(4, 2.0)  # same bucket (3-4 rows): moving average of rows and seconds
    assert c.table() == {3: pytest.approx(1.25)}
    c.observe(1, 0.5)
    c.observe(0, 9.0)    # ignored: no rows
    c.observe(2, -1.0)   # ignored: no time
    assert list(c.table()) == [1, 3]
    c.observe(4, 2.0)  # a bucket after the first moves alone
    assert c.table() == {1: 0.5, 3: pytest.approx(1.4375)} and c.cost(3.4375) == pytest.approx(1.4375)
    frozen = StepCosts({4: 1.0})
    frozen.observe(4, 100.0)
    assert frozen.table() == {4: 1.0}
    with pytest.raises(ValueError, match="rows must be >= 1"):
        StepCosts({0: 1.0})


# ----- the choice --------------------------------------------------------------------------------
def options(first: int, widths=(1, 2, 4, 8)):
    """Each width's candidates and rows for a fresh all-masked sub-block run from ``first``."""
    return [(w, list(range(first, first + w)), w) for w in widths]


def test_pass_rates_start_even_fall_with_distance_and_forget():
    rates = CommitRates(8, memory=0.5)
    assert rates.curve() == [1.0] + [0.5] * 7
    rates.observe([10, 11, 13], [0.95, 0.2, 0.99], threshold=0.9)  # offset 1 missed, offset 3 passed
    assert rates.curve()[1] == pytest.approx(0.25)
    assert rates.curve()[3] == rates.curve()[1]  # never above a nearer offset's
    assert rates.expected_commits([10, 11, 13]) == pytest.approx(1.5)
    for _ in range(10):  # offset 1 passes from now on: the old miss fades
        rates.observe([0, 1], [0.5, 0.99], threshold=0.9)
    assert rates.curve()[1] > 0.8  # (2 + 1/2) / (2 + 1) at most, with memory 1/2


def test_untried_offsets_are_tried_then_learnt():
    rates = CommitRates(8)
    linear = StepCosts({1: 1.0, 8: 8.0}).cost  # compute-bound: every row costs the same
    fixed_part = StepCosts({1: 1.0, 8: 2.0}).cost
    # Nothing known (pass rate 1/2): one row per step when every row costs the same; with a
    # fixed part per step, the widest.
    assert choose_sub_block(options(0), rates, linear) == 1
    assert choose_sub_block(options(0), rates, fixed_part) == 8
    for _ in range(3):  # far candidates never pass: back to one position per step
        rates.observe(list(range(8)), [0.99] + [0.1] * 7, threshold=0.9)
    assert choose_sub_block(options(0), rates, fixed_part) == 1
    # ... unless 8 rows cost little more than one: a pass rate of 1/8 still pays for them.
    assert choose_sub_block(options(0), rates, StepCosts({1: 1.0, 8: 1.5}).cost) == 8
    for _ in range(20):  # now they all pass (threshold 0): the widest again
        rates.observe(list(range(8)), [0.5] * 8, threshold=0.0)
    assert choose_sub_block(options(0), rates, fixed_part) == 8


def test_a_near_tie_keeps_the_narrower_width():
    rates = CommitRates(8)
    for _ in range(50):  # far candidates pass about 1 % of the time
        rates.observe(list(range(8)), [0.99] + [0.0] * 7, threshold=0.9)
    # 8 rows measured 4 % dearer than one step commit ~9 % more: within the noise of measured
    # costs, so not worth the rows; at 1 % dearer they are.
    assert choose_sub_block(options(0), rates, StepCosts({1: 1.0, 8: 1.04}).cost) == 1
    assert choose_sub_block(options(0), rates, StepCosts({1: 1.0, 8: 1.01}).cost) == 8


def test_rows_that_cost_nothing_more_take_the_widest():
    rates = CommitRates(8)
    rates.observe(list(range(8)), [0.2] * 8, threshold=0.9)
    flat = options(0)
    same_rows = [(w, c, 8) for w, c, _ in flat]  # block-causal: the whole block runs anyway
    assert choose_sub_block(same_rows, rates, StepCosts({8: 1.0}).cost) == 8


# ----- through the engine ------------------------------------------------------------------------
def auto(block, threshold, shift=True, block_causal=False) -> DiffusionParams:
    return DiffusionParams(block_size=block, sub_block_size="auto", threshold=threshold, mask_token_id=MASK,
                           shift=shift, attention="block" if block_causal else "causal")


def reference(model, p, sp: SamplingParams, d: DiffusionParams, widths: list[int]):
    stops = set(sp.stop_token_ids) | (set() if sp.ignore_eos else EOS)
    return reference_dlm(model, p, block=d.block_size, sub_block=widths, threshold=d.threshold,
                         mask_id=MASK, shift=d.shift, block_causal=d.attention == "block",
                         max_tokens=sp.max_tokens, stop_ids=stops)


GRID = list(itertools.product([False, True], [4, 8], [0.0, 0.2, 1.5], [False, True]))
# A step's price rises with its rows, with a fixed part: the choice depends on the pass rates.
PRICES = {1: 1.0, 2: 1.3, 4: 2.0, 8: 3.5, 16: 6.5, 32: 12.5, 64: 24.5, 128: 48.5}


@pytest.mark.anyio
@pytest.mark.parametrize("prices", ["fixed", "measured"])
async def test_auto_widths_match_the_reference_given_the_trace(model_dir, model, prices):
    engine = recording_engine(model_dir, step_costs=PRICES if prices == "fixed" else None)
    requests = [(prompt([5, 8, 11, 3][i % 4], seed=100 + i), SamplingParams(max_tokens=10 + i % 9),
                 auto(block, threshold, shift, block_causal))
                for i, (shift, block, threshold, block_causal) in enumerate(GRID)]
    async with engine:
        outs = await run_all(engine, requests)
        assert_idle(engine)
    traces = {seq.request_id: seq.sub_block_trace for seq in engine.sequences}
    assert len(traces) == len(requests)
    for (p, sp, d), out, case in zip(requests, outs, GRID):
        widths = traces[out.request_id]
        assert set(widths) <= {w for w in (1, 2, 4, 8) if d.block_size % w == 0}
        assert out.token_ids == reference(model, p, sp, d, list(widths)), case
        assert MASK not in out.token_ids
    if prices == "fixed":  # the prices make the choice differ between requests and steps
        assert len({w for t in traces.values() for w in t}) >= 3
        assert engine.stats().step_costs == PRICES
    else:  # measured: buckets of row counts, in order
        measured = list(engine.stats().step_costs)
        assert measured and measured == sorted(measured)


@pytest.mark.anyio
async def test_prices_decide_the_width(model_dir, model):
    # Compute-bound prices (every row costs the same) and a threshold nobody passes: one
    # position per step, which with shift and causal attention is greedy AR decoding.
    engine = recording_engine(model_dir, step_costs={1: 1.0, 64: 64.0})
    p, sp = prompt(6, seed=7), SamplingParams(max_tokens=24, ignore_eos=True)
    async with engine:
        out = await engine.generate(p, sp, diffusion=auto(8, threshold=1.5))
    assert set(engine.sequences[-1].sub_block_trace) == {1}
    assert out.token_ids == reference_ar(model, p, 24, (), MASK)
    # A fixed part per step: far candidates are tried, fail, and the width falls back to 1.
    engine = recording_engine(model_dir, step_costs={1: 1.0, 8: 2.0})
    async with engine:
        out = await engine.generate(p, sp, diffusion=auto(8, threshold=1.5))
    widths = engine.sequences[-1].sub_block_trace
    assert 8 in widths and widths[-8:] == [1] * 8
    assert out.token_ids == reference(model, p, sp, auto(8, 1.5), list(widths))
    # Rows whose price does not grow with their number: the whole block every step.
    engine = recording_engine(model_dir, step_costs={1: 1.0})
    async with engine:
        out = await engine.generate(p, sp, diffusion=auto(8, threshold=0.0))
    widths = engine.sequences[-1].sub_block_trace
    assert widths[0] == 1  # the first block's one open position: every width offers only it
    assert set(widths[1:]) == {8}
    # prefill, the first block's last position, then per block its first position (from the
    # previous block's commit) and one step for the rest: as with sub_block_size=8.
    assert out.metrics.forwards == 8


def test_auto_is_validated_like_any_width(model_dir):
    eng = Engine.from_pretrained(model_dir, lm_head="fp32", diffusion=DiffusionParams(sub_block_size="auto"))
    try:
        out = eng.generate_batch([prompt(4, seed=1)], SamplingParams(max_tokens=6),
                                 diffusion=DiffusionParams(block_size=4, mask_token_id=MASK))[0]
        assert len(out.token_ids) == 6 or out.finish_reason == "stop"
        # The engine's default applies to requests that leave the width unset, not to others.
        resolve = eng._intake.resolve_dlm
        assert resolve(DiffusionParams(block_size=4, mask_token_id=MASK), SamplingParams()).sub_block_auto
        assert not resolve(DiffusionParams(block_size=4, sub_block_size=2, mask_token_id=MASK),
                           SamplingParams()).sub_block_auto
        with pytest.raises(InvalidRequestError, match="sub_block_size"):
            eng.generate_batch([prompt(4, seed=1)], diffusion={"sub_block_size": "wide", "mask_token_id": MASK})
    finally:
        eng.close()
    for bad, where in (({0: 1.0}, "key"), ({2: 0.0}, "step_costs"), ({2: float("inf")}, r"step_costs\[2\]")):
        with pytest.raises(InvalidRequestError, match=where):
            Engine.from_pretrained(model_dir, step_costs=bad)
    assert sub_block_size_arg("auto") == "auto" and sub_block_size_arg("4") == 4
    for bad in ("0", "-2", "wide"):
        with pytest.raises(Exception, match="positive integer or 'auto'"):
            sub_block_size_arg(bad)


@pytest.mark.anyio
async def test_one_scan_options_equal_each_width_planned_alone(model_dir, monkeypatch):
    """_choose_width prices every width from one scan of the block; each option's candidates and
    rows must be what planning that width alone gives."""
    import wrinklefree_rt.sequence as sequence_module
    from wrinklefree_rt.sequence import Sequence

    checked = []
    real_choose = sequence_module.choose_sub_block

    def checking_choose(options, rates, price):
        seq = current[0]
        saved = seq.sub_block, seq._cands
        for width, cands, rows in options:
            seq.sub_block, seq._cands = width, None
            need, start, end = seq._denoise_rows()
            assert (seq._candidates(), end - start) == (list(cands), rows), width
            checked.append(width)
        seq.sub_block, seq._cands = saved
        return real_choose(options, rates, price)

    current: list = [None]
    real_method = Sequence._choose_width

    def choose_width(self, price):
        current[0] = self
        real_method(self, price)

    monkeypatch.setattr(sequence_module, "choose_sub_block", checking_choose)
    monkeypatch.setattr(Sequence, "_choose_width", choose_width)
    engine = recording_engine(model_dir, step_costs=PRICES)
    requests = [(prompt([5, 8, 11, 3][i % 4], seed=200 + i), SamplingParams(max_tokens=10 + i % 9),
                 auto(block, threshold, shift, block_causal))
                for i, (shift, block, threshold, block_causal) in enumerate(GRID)]
    async with engine:
        await run_all(engine, requests)
    assert len(checked) > 100 and set(checked) == {1, 2, 4, 8}
