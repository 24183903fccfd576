"""Kernel choice per row count (cpp/kernels/ternary_plan.h) through the engine: every forced LUT
kernel gives the tiles' logits bit for bit, and the measured choice is cached per CPU."""
import functools

import numpy as np
import pytest

from engine_helpers import fresh_sequence, hf_and_tensors, make_engine, prefill, random_ids
from wrinklefree_rt import _core

DEFAULT = _core.default_kernel_name()
# Prompt lengths fall in every row-count bucket the LUT kernels serve (1 .. 128+ rows).
LENGTHS = (1, 3, 17, 45, 70, 130)


@functools.lru_cache(maxsize=None)
def _model():
    return hf_and_tensors(seed=3, num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=301,
                          intermediate_size=200, tie_word_embeddings=False)


def _logits(**engine_kw):
    _, cfg, tensors = _model()
    eng = make_engine(cfg, tensors, lm_head="int8", **engine_kw)
    out = []
    for i, n in enumerate(LENGTHS):
        slot = fresh_sequence(eng, n + 1)
        out.append(prefill(eng, slot, random_ids(cfg, n, seed=i)))
        # One more row on the cache the prefill wrote: the decode (1-row) path.
        out.append(prefill(eng, slot, random_ids(cfg, 1, seed=50 + i), start=n))
        eng.free_sequence(slot)
    return eng, np.concatenate(out)


@pytest.mark.parametrize("kernel", _core.lut_kernel_names(DEFAULT) + ["lut-generic"])
def test_forced_lut_kernel_gives_the_tiles_logits_exactly(kernel):
    tiles_eng, want = _logits(ternary_kernel="tiles")
    assert tiles_eng.ternary_plan == " ".join(f"{1 << b}:tiles" for b in range(8))
    eng, got = _logits(ternary_kernel=kernel)
    assert eng.ternary_plan == " ".join(f"{1 << b}:{kernel}" for b in range(8))
    # Integer GEMM results are identical, so every float after them is too.
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("isa,kernel", [(isa, kernel) for isa in sorted({"generic", DEFAULT})
                                         for kernel in ["tiles", (_core.lut_kernel_names(isa) or ["lut-generic"])[0]]])
def test_base3_packing_gives_the_tiles_logits_exactly(isa, kernel):
    _, want = _logits(ternary_kernel="tiles", isa=isa)
    eng, got = _logits(ternary_kernel=kernel, isa=isa, ternary_packing="base3")
    # The dense kernel is named by its layout; a forced LUT kernel runs on its own layout.
    assert eng.ternary_plan == " ".join(f"{1 << b}:{'base3' if kernel == 'tiles' else kernel}" for b in range(8))
    np.testing.assert_array_equal(got, want)


def test_base3_packing_is_calibrated_under_its_own_key(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("WFRT_TERNARY", raising=False)
    _, cfg, tensors = _model()
    plan = make_engine(cfg, tensors, ternary_packing="base3").ternary_plan
    assert {entry.split(":")[1] for entry in plan.split()} <= {"base3", *_core.lut_kernel_names(DEFAULT)}
    assert make_engine(cfg, tensors).ternary_plan.count("base3") == 0
    keys = [line.split("\t")[0] for line in (tmp_path / "wrinklefree_rt" / "ternary_plan.txt").read_text().splitlines()]
    assert keys == ["base3", "v1"]


def test_unknown_packing_is_refused():
    _, cfg, tensors = _model()
    with pytest.raises(ValueError, match="ternary_packing 'tq1' is unknown .*choose from: 2bit, base3"):
        make_engine(cfg, tensors, ternary_packing="tq1")


def test_unknown_kernel_is_refused_with_the_choices():
    _, cfg, tensors = _model()
    with pytest.raises(ValueError, match="'lut7' is unknown .*choose from: auto, tiles"):
        make_engine(cfg, tensors, ternary_kernel="lut7")


def test_environment_variable_forces_a_kernel(monkeypatch):
    monkeypatch.setenv("WFRT_TERNARY", "lut-generic")
    _, cfg, tensors = _model()
    assert make_engine(cfg, tensors).ternary_plan.endswith("128:lut-generic")
    # The engine option wins over the environment.
    assert make_engine(cfg, tensors, ternary_kernel="tiles").ternary_plan.endswith("128:tiles")


def test_auto_measures_once_then_reads_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("WFRT_TERNARY", raising=False)
    _, cfg, tensors = _model()
    measured = make_engine(cfg, tensors).ternary_plan
    choices = {"tiles", *_core.lut_kernel_names(DEFAULT)}
    assert [entry.split(":")[0] for entry in measured.split()] == [str(1 << b) for b in range(8)]
    assert {entry.split(":")[1] for entry in measured.split()} <= choices
    cache = tmp_path / "wrinklefree_rt" / "ternary_plan.txt"
    [line] = cache.read_text().splitlines()
    key, names = line.rsplit("\t", 1)
    assert key.endswith(f"\t{DEFAULT}\tK={cfg.hidden_size}")
    # A second engine takes the cached line as it stands (here rewritten to a known plan).
    forced = _core.lut_kernel_names(DEFAULT)[0]
    cache.write_text(f"{key}\t{' '.join(['tiles'] * 4 + [forced] * 4)}\n")
    assert make_engine(cfg, tensors).ternary_plan.split()[4] == f"16:{forced}"
    # The scalar table is never calibrated: it runs its tiles.
    assert make_engine(cfg, tensors, isa="generic").ternary_plan.endswith("128:tiles")


def test_engine_option_and_stats_name_the_kernels(tmp_path):
    from wrinklefree_rt import Engine, InvalidRequestError
    from wrinklefree_rt.random_model import Shape, write_model_dir

    write_model_dir(tmp_path, Shape(name="tiny", hidden=64, intermediate=96, layers=1, heads=2, kv_heads=1, vocab=64,
                                    max_positions=64))
    forced = _core.lut_kernel_names(DEFAULT)[0] if _core.lut_kernel_names(DEFAULT) else "lut-generic"
    with Engine.from_pretrained(tmp_path, ternary_kernel=forced, max_num_seqs=1) as engine:
        stats = engine.stats()
        assert stats.isa == DEFAULT
        assert stats.ternary_plan == " ".join(f"{1 << b}:{forced}" for b in range(8))
    with pytest.raises(ValueError, match="'lut7' is unknown"):
        Engine.from_pretrained(tmp_path, ternary_kernel="lut7", max_num_seqs=1)
    with pytest.raises(InvalidRequestError, match="ternary_kernel"):
        Engine.from_pretrained(tmp_path, ternary_kernel=7, max_num_seqs=1)
    with pytest.raises(InvalidRequestError, match="ternary_packing"):
        Engine.from_pretrained(tmp_path, ternary_packing="1.58bit", max_num_seqs=1)
    with Engine.from_pretrained(tmp_path, ternary_packing="base3", ternary_kernel="tiles", max_num_seqs=1) as engine:
        assert engine.stats().ternary_plan == " ".join(f"{1 << b}:base3" for b in range(8))


def test_only_the_layouts_the_plan_reads_are_kept():
    _, cfg, tensors = _model()
    lut = (_core.lut_kernel_names(DEFAULT) or ["lut-generic"])[0]
    held = {(kernel, packing): make_engine(cfg, tensors, lm_head="int8", ternary_kernel=kernel,
                                           ternary_packing=packing).weight_bytes
            for kernel in ("tiles", lut) for packing in ("2bit", "base3")}
    H, I, D = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    qd, kd = cfg.num_attention_heads * D, cfg.num_key_value_heads * D
    shapes = [(qd, H), (kd, H), (kd, H), (H, qd), (I, H), (I, H), (H, I)] * cfg.num_hidden_layers

    def layout(packed_bytes):  # each matrix a 64-byte aligned piece of one arena
        return sum(-(-packed_bytes(n, k) // 64) * 64 for n, k in shapes)

    head = cfg.vocab_size * H  # the int8 head's rows
    assert held[("tiles", "2bit")] == head + layout(_core.ternary_packed_bytes)
    assert held[("tiles", "base3")] == head + layout(_core.base3_packed_bytes)  # the tiles freed
    # A LUT kernel for every row count: its own layout only, whatever the packing.
    assert held[(lut, "2bit")] == held[(lut, "base3")] > head
