"""Every CLI command run as a user runs it: ``python -m wrinklefree_rt ...`` in a subprocess, on the
bitnet.cpp I2_S fixture (../shared/fixtures/i2s-tiny) copied alone into a folder, so the GGUF is
the only file there is. Outputs are checked against the engine in-process and the fixture's
expected.json."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_formats_i2s import repacked_fixture
from wrinklefree_rt import Engine
from wrinklefree_rt.formats.gguf_file import GGUFFile
from wrinklefree_rt.formats.i2s import I2S_TYPE, i2s_nbytes, pack_i2s, unpack_i2s_codes

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "i2s-tiny"


def cli(*args, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wrinklefree_rt", *map(str, args)], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lone") / "model.gguf"
    shutil.copy(FIXTURE / "ggml-model-i2s-bitnet.gguf", path)
    return path


@pytest.fixture(scope="module")
def expected():
    return json.loads((FIXTURE / "expected.json").read_text())


def test_help_lists_every_command_with_examples():
    from wrinklefree_rt.cli import COMMANDS
    top = cli("--help")
    assert top.returncode == 0
    for name in COMMANDS:
        assert f"  {name} " in top.stdout
    for name in ("chat", "generate", "inspect", "verify", "bench"):
        r = cli(name, "--help")
        assert r.returncode == 0 and "examples:\n  wrinklefree-rt " + name in r.stdout, name
    assert cli("nonsense").returncode == 2


@pytest.mark.parametrize("packing", ["2bit", "base3"])
def test_generate_prompt_ids_json(gguf, expected, packing):
    ids = ",".join(map(str, expected["prompt_ids"]))
    r = cli("generate", gguf, "--prompt-ids", ids, "--max-tokens", 16, "--ignore-eos", "--json",
            "--ternary-packing", packing)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["prompt_token_ids"] == expected["prompt_ids"] and out["finished"]
    assert out["token_ids"] == expected["greedy_ids_bitnet_cpp"]  # bitnet.cpp's own greedy tokens


def test_generate_text_with_the_gguf_tokenizer(gguf, expected):
    r = cli("generate", gguf, expected["prompt"], "--max-tokens", 16, "--ignore-eos")
    assert r.returncode == 0, r.stderr
    with Engine.from_pretrained(gguf) as engine:
        want = engine.tokenizer.decode(expected["greedy_ids_bitnet_cpp"])
    assert r.stdout == want + "\n"


def test_chat_from_piped_stdin_keeps_the_conversation(gguf):
    r = cli("chat", gguf, "--system", "Be brief.", "--max-tokens", 6, "--ignore-eos",
            stdin="Hello there\n\nWhat did I say?\n/exit\nnever read\n")
    assert r.returncode == 0, r.stderr
    messages = [{"role": "system", "content": "Be brief."}]
    replies = []
    with Engine.from_pretrained(gguf) as engine:
        for line in ("Hello there", "What did I say?"):
            messages.append({"role": "user", "content": line})
            out = engine.generate_batch([messages], dict(max_tokens=6, ignore_eos=True))[0]
            messages.append({"role": "assistant", "content": out.text})
            replies.append(out.text)
    assert replies[0] != replies[1]
    assert r.stdout == replies[0] + "\n" + replies[1] + "\n"


def test_inspect(gguf):
    r = cli("inspect", gguf, "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    f = GGUFFile(gguf)
    assert info["format"] == "gguf"
    assert {t["name"]: t["dtype"] for t in info["tensors"]} == {
        n: ("I2_S" if i.ggml_type == I2S_TYPE else {0: "F32", 1: "F16"}[i.ggml_type]) for n, i in f.tensors.items()}
    q = next(t for t in info["tensors"] if t["name"] == "blk.0.attn_k.weight")
    assert q["shape"] == [128, 256] and q["bytes"] == i2s_nbytes(128 * 256)
    assert info["total_bytes"] == sum(t["bytes"] for t in info["tensors"])
    assert info["kv_bytes_per_token"] == 2 * 2 * 2 * 64 * 4  # K and V, 2 layers, 2 KV heads of 64, fp32
    assert info["config"]["num_hidden_layers"] == 2 and info["config"]["vocab_size"] == 1024
    assert info["chat_template"] == f.fields["tokenizer.chat_template"]
    assert info["tokenizer"] == "rebuilt from the GGUF metadata"
    assert info["dlm"] == {"mask_token_id": None, "block_size": None, "shift": None}
    from wrinklefree_rt import _core
    assert info["kernels"] == _core.default_kernel_name()
    text = cli("inspect", FIXTURE / "hf")
    assert text.returncode == 0 and "format:    hf-safetensors (online)" in text.stdout
    assert re.search(r"\n  model\.layers\.1\.mlp\.down_proj\.weight +BF16 +\[256, 512\] +262,144\n", text.stdout)


def test_verify_good_models_pass(gguf):
    for args in ((gguf,), (gguf, "--reference", FIXTURE / "hf"), (FIXTURE / "hf",)):
        r = cli("verify", *args, "-q")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "PARITY: OK" in r.stdout and "top-1 agreement: " in r.stdout


def _corrupt_layer(src: Path, dst: Path, tensor: str) -> Path:
    """``src`` with the I2_S codes of ``tensor`` replaced by random ones (a valid file, a wrong model)."""
    f = GGUFFile(src)
    info = f.tensors[tensor]
    n = int(np.prod(info.shape))
    scale = f.data[info.offset + n // 4:info.offset + n // 4 + 4].view("<f4")[0]
    raw = bytearray(src.read_bytes())
    codes = np.random.default_rng(0).integers(-1, 2, n).astype(np.int8)
    raw[info.offset:info.offset + i2s_nbytes(n)] = pack_i2s(codes, scale).tobytes()
    dst.write_bytes(bytes(raw))
    assert not np.array_equal(unpack_i2s_codes(f.data[info.offset:info.offset + n // 4], 32), codes)
    return dst


def test_verify_names_the_corrupted_layer(gguf, tmp_path):
    bad = _corrupt_layer(gguf, tmp_path / "bad.gguf", "blk.1.ffn_up.weight")
    r = cli("verify", bad, "--reference", FIXTURE / "hf", "-q")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "first divergent layer: 1 " in r.stdout and "PARITY: MISMATCH" in r.stdout
    r = cli("verify", bad, "--reference", FIXTURE / "hf", "-q", "--json")
    report = json.loads(r.stdout)
    assert report["first_divergent_layer"] == 1 and not report["parity"] and report["prompts_agreeing"] == 0


def test_wrong_i2s_layout_is_caught_by_verify(tmp_path):
    """Both layouts take the same bytes and the file does not say which build wrote it: an ARM file
    read as x86 permutes the inputs of every block. ``verify`` catches it and names layer 0; read
    with the right option, the same file passes."""
    arm = repacked_fixture(tmp_path, "arm")
    bad = cli("verify", arm, "--reference", FIXTURE / "hf", "-q")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "first divergent layer: 0 " in bad.stdout
    good = cli("verify", arm, "--i2s-layout", "arm", "--reference", FIXTURE / "hf", "-q")
    assert good.returncode == 0, good.stdout + good.stderr


def test_bench_json(gguf):
    r = cli("bench", gguf, "--reps", 2, "--tg", 4, "--prompt-len", 8, "--pp", 16, "--rows", "8,40", "--json", "-q",
            "--ternary-packing", "base3")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["ternary_plan"].startswith("1:base3")  # a 1-row step never pays for a LUT build
    assert set(res["median_per_s"]) == {"tg", "pp", "batched_8", "batched_40"}
    assert all(len(v) == 2 and min(v) > 0 for v in res["samples_per_s"].values())
    assert res["tg_tokens"] == 4 and res["pp_tokens"] == 16


@pytest.mark.parametrize("args", [("inspect", "/no/such/model"), ("chat", "/no/such/model"),
                                  ("generate", "/no/such/model", "hi"), ("verify", "/no/such/model"),
                                  ("bench", "/no/such/model")])
def test_bad_path_is_one_line(args):
    r = cli(*args)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "no such file" in r.stderr
    assert "Traceback" not in r.stderr


def test_corrupt_file_is_one_line_and_debug_shows_the_traceback(gguf, tmp_path):
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(gguf.read_bytes()[:-5000])
    for command in (("inspect", bad), ("generate", bad, "--prompt-ids", "1,2")):
        r = cli(*command)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "truncated" in r.stderr, r.stderr
    r = cli("generate", bad, "--prompt-ids", "1,2", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "ModelFormatError" in r.stderr
    r = cli("generate", gguf, "--prompt-ids", "1,x")
    assert r.returncode == 1 and r.stderr == "error: --prompt-ids '1,x': expected comma-separated integers\n"
    r = cli("generate", gguf, "--prompt-ids", "5000")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_chat_ctrl_c_stops_the_reply_and_the_conversation_goes_on(tmp_path):
    """SIGINT during a reply aborts that request (" [interrupted]"), the next turn is answered on
    the same engine, and /exit ends the session with status 0."""
    import os
    import queue
    import signal
    import threading

    from tiny_models import make_hf_model, save_hf_model
    # big enough that a 4000-token reply takes seconds on one thread
    model = make_hf_model(3, vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096,
                          bos_token_id=0, eos_token_id=[1])
    save_hf_model(model, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURE / "hf" / name, tmp_path / name)
    proc = subprocess.Popen([sys.executable, "-m", "wrinklefree_rt", "chat", str(tmp_path), "--threads", "1",
                             "--max-tokens", "4000", "--ignore-eos"], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=0)
    chunks: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [chunks.put(c) for c in iter(lambda: proc.stdout.read(1), "")],
                     daemon=True).start()
    seen = ""

    def wait_for(pred, timeout=120.0):
        nonlocal seen
        import time
        end = time.monotonic() + timeout
        while not pred(seen):
            seen += chunks.get(timeout=max(0.01, end - time.monotonic()))

    try:
        for turn in ("first question", "second question"):
            start = len(seen)
            proc.stdin.write(turn + "\n")
            proc.stdin.flush()
            wait_for(lambda s: len(s) - start > 20)  # the reply is streaming
            os.kill(proc.pid, signal.SIGINT)
            wait_for(lambda s: s.count(" [interrupted]\n") == (1 if turn.startswith("first") else 2))
        proc.stdin.write("/exit\n")
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert seen.count(" [interrupted]\n") == 2
