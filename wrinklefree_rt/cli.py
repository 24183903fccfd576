"""``wrinklefree-rt`` (also ``python -m wrinklefree_rt``): one small function per command and one
dispatch table, ``COMMANDS``. A command is ``name: (one-line help, "module:function")``; the
function takes the command's argv and returns the exit status, and is imported only when run.

Errors a user can cause (bad path, corrupt file, bad option, bad request) print one line on
stderr and exit 1; ``--debug`` anywhere on the command line shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import json
import signal
import statistics
import sys
from pathlib import Path
from typing import Any, Literal

__all__ = ["main", "COMMANDS"]

COMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("chat with a model in the terminal (or from piped stdin)", "wrinklefree_rt.cli:chat"),
    "generate": ("stream one completion", "wrinklefree_rt.cli:generate"),
    "inspect": ("show a checkpoint's format, config, tensors and chat template", "wrinklefree_rt.cli:inspect"),
    "verify": ("compare the logits with HF transformers on the same checkpoint", "wrinklefree_rt.cli:verify"),
    "bench": ("measure tg / pp / batched throughput on a model", "wrinklefree_rt.cli:bench"),
    "convert": ("convert a checkpoint to the runtime's packed format", "wrinklefree_rt.convert:main"),
    "demo": ("run concurrent AR and DLM requests on a random model (no download)", "wrinklefree_rt.demo:main"),
    "scheduler-bench": ("measure the scheduler with N concurrent DLM requests", "wrinklefree_rt.demo:bench_main"),
    "serve": ("serve a model over an OpenAI-compatible HTTP API", "wrinklefree_rt.server.cli:main"),
}

MODEL_HELP = ("model: an HF directory, a directory made by `convert`, a .wfrt, a BitNet GGUF (llama.cpp "
              "bitnet or bitnet.cpp I2_S; its tokenizer comes from the file) or a SGLBITNT .bin")


class CliError(Exception):
    """A one-line error for the user."""


def _parser(command: str, description: str, examples: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"wrinklefree-rt {command}", description=description,
                                   epilog="examples:\n" + examples,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def sub_block_size_arg(text: str) -> int | Literal["auto"]:
    """``--sub-block-size``: a positive integer or ``auto``."""
    if text == "auto":
        return "auto"
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")


def _add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--threads", type=int, default=0, help="worker threads (0: one per core)")
    p.add_argument("--lm-head", choices=["int8", "q4", "fp32"], default="int8")
    p.add_argument("--ternary-packing", choices=["2bit", "base3"], default="2bit",
                   help="base3: 5 ternary codes per byte (1.6 bits a weight, same logits)")
    p.add_argument("--i2s-layout", choices=["x86", "arm"], default="x86",
                   help="block layout of a bitnet.cpp I2_S GGUF: the build that wrote it (default x86)")
    p.add_argument("--chat-template", choices=["auto", "bitnet", "llama3"], default="auto",
                   help="auto: the checkpoint's own template, else a built-in format")


def _add_sampling_args(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("--max-tokens", type=int, default=max_tokens)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--dlm", action="store_true", help="block-diffusion decoding")
    p.add_argument("--block-size", type=int)
    p.add_argument("--sub-block-size", type=sub_block_size_arg,
                   help='a divisor of the block size, or "auto" (chosen per step by cost)')
    p.add_argument("--threshold", type=float)


def _load_bar(pairs, total: int):
    """Reading (and for an HF checkpoint quantizing) a model's tensors, shown when stderr is a
    terminal (a pipe gets no bar, only errors)."""
    from tqdm import tqdm
    return tqdm(pairs, total=total, desc="loading", unit="tensor", leave=False, file=sys.stderr, disable=None)


def _engine(args, **config: Any):
    from .engine import Engine
    return Engine.from_pretrained(args.model, progress=_load_bar, num_threads=args.threads, lm_head=args.lm_head,
                                  ternary_packing=args.ternary_packing, i2s_layout=args.i2s_layout,
                                  chat_template=args.chat_template, **config)


def _request_params(args):
    from .params import DiffusionParams, SamplingParams
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=args.stop, ignore_eos=args.ignore_eos)
    diffusion = DiffusionParams(block_size=args.block_size, sub_block_size=args.sub_block_size,
                                threshold=args.threshold) if args.dlm else None
    return params, diffusion


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ----------------------------------------------------------------------------------- generate

def generate(argv: list[str]) -> int:
    p = _parser("generate", "Stream one completion of a prompt (text, chat message or token ids).",
                "  wrinklefree-rt generate model.gguf 'The capital of France is' --max-tokens 16\n"
                "  wrinklefree-rt generate ./hf-model 'Hi!' --chat --temperature 0.7\n"
                "  wrinklefree-rt generate model.gguf --prompt-ids 128000,791,6864 --json")
    _add_engine_args(p)
    p.add_argument("prompt", nargs="?", help="prompt text (a user message with --chat)")
    p.add_argument("--prompt-ids", help="comma-separated token ids instead of text (no tokenizer needed)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    p.add_argument("--json", action="store_true", help="print the final RequestOutput as JSON (no streaming)")
    p.add_argument("--stats", action="store_true", help="print request metrics to stderr")
    _add_sampling_args(p, 128)
    args = p.parse_args(argv)
    if (args.prompt is None) == (args.prompt_ids is None):
        p.error("give a prompt or --prompt-ids (one of them)")
    if args.prompt_ids is not None:
        try:
            prompt: Any = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError:
            raise CliError(f"--prompt-ids {args.prompt_ids!r}: expected comma-separated integers") from None
    else:
        prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    params, diffusion = _request_params(args)
    engine = _engine(args, max_num_seqs=1)

    async def run():
        async with engine:
            shown, out = 0, None
            async for out in engine.generate_async(prompt, params, diffusion=diffusion):
                if not args.json:
                    _write(out.text[shown:])
                    shown = len(out.text)
        return out

    import anyio
    import msgspec
    out = anyio.run(run)
    if args.json:
        _write(msgspec.json.encode(out).decode() + "\n")
    else:
        _write("\n")
    if args.stats:
        m = out.metrics
        print(f"{len(out.token_ids)} tokens ({out.finish_reason}), {m.forwards} forwards, "
              f"ttft {m.ttft * 1e3:.1f} ms, {m.tokens_per_s:.1f} tokens/s", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------- chat

def chat(argv: list[str]) -> int:
    p = _parser("chat", "Chat with a model: replies stream as they are decoded and the conversation is kept. "
                        "Ctrl-C stops the current reply (the conversation goes on); Ctrl-D or /exit quits. "
                        "When stdin is not a terminal, each line read is one user turn.",
                "  wrinklefree-rt chat ggml-model-i2_s.gguf --system 'You are a helpful assistant.'\n"
                "  wrinklefree-rt chat ./my-dlm --dlm --block-size 32\n"
                "  printf 'Hi\\nWhat did I just say?\\n' | wrinklefree-rt chat model.gguf --max-tokens 64")
    _add_engine_args(p)
    p.add_argument("--system", help="system prompt")
    _add_sampling_args(p, 512)
    args = p.parse_args(argv)
    params, diffusion = _request_params(args)
    engine = _engine(args, max_num_seqs=1)
    if engine.tokenizer is None:
        raise CliError(f"{args.model}: no tokenizer (no tokenizer.json beside it, and not a GGUF with a "
                       "supported vocabulary): chat needs one")
    import anyio
    anyio.run(_chat_loop, engine, args.system, params, diffusion)
    return 0


def _read_turn(tty: bool) -> str | None:
    if tty:
        try:
            return input("> ")
        except EOFError:
            return None
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


async def _chat_loop(engine, system: str | None, params, diffusion) -> None:
    import anyio
    messages = [{"role": "system", "content": system}] if system else []
    tty = sys.stdin.isatty()
    reply_scope: list[anyio.CancelScope] = []  # the reply being streamed, if any

    async def on_sigint(signals) -> None:
        async for _ in signals:
            if reply_scope:
                reply_scope[0].cancel()
            else:
                _write("\n(Ctrl-D or /exit quits)\n" + ("> " if tty else ""))

    async with engine, anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGINT) as signals:
            tg.start_soon(on_sigint, signals)
            while True:
                line = await anyio.to_thread.run_sync(_read_turn, tty, abandon_on_cancel=True)
                if line is None or line.strip() in ("/exit", "/quit"):
                    break
                if not line.strip():
                    continue
                messages.append({"role": "user", "content": line})
                text = ""
                with anyio.CancelScope() as scope:
                    reply_scope.append(scope)
                    async with engine.generate_async(messages, params, diffusion=diffusion) as stream:
                        async for out in stream:
                            _write(out.text[len(text):])
                            text = out.text
                reply_scope.clear()
                _write(" [interrupted]\n" if scope.cancelled_caught else "\n")
                messages.append({"role": "assistant", "content": text})
            tg.cancel_scope.cancel()
    if tty:
        _write("\n")


# ------------------------------------------------------------------------------------ inspect

def inspect(argv: list[str]) -> int:
    p = _parser("inspect", "Show what a checkpoint holds and how this runtime will run it.",
                "  wrinklefree-rt inspect ggml-model-i2_s.gguf\n"
                "  wrinklefree-rt inspect ./hf-model --json")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)

    import msgspec

    from . import _core
    from .formats.listing import describe
    from .tokenizer import load_tokenizer

    listing = describe(args.model)
    cfg = listing.config
    tok = load_tokenizer(args.model)
    template = None if tok is None or tok.chat_template is None else tok.chat_template.source
    folder = Path(args.model) if Path(args.model).is_dir() else Path(args.model).parent
    info = {
        "format": listing.format,
        "path": listing.path,
        "config": msgspec.to_builtins(cfg),
        "tensors": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "bytes": t.nbytes}
                    for t in listing.tensors],
        "total_bytes": listing.total_bytes,
        "kv_bytes_per_token": 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4,
        "kernels": _core.default_kernel_name(),
        "kernels_supported": list(_core.kernel_names()),
        "tokenizer": None if tok is None else "tokenizer.json" if (folder / "tokenizer.json").is_file()
        else "rebuilt from the GGUF metadata",
        "chat_template": template,
        "chat_format_fallback": None if tok is None else tok.chat_format,
        "dlm": {"mask_token_id": cfg.mask_token_id if cfg.mask_token_id is not None
                else (tok.mask_token_id if tok else None),
                "block_size": cfg.bd_size, "shift": cfg.shift},
    }
    if args.json:
        _write(json.dumps(info, ensure_ascii=False) + "\n")
        return 0
    c = info["config"]
    lines = [f"format:    {info['format']}  ({info['path']})",
             "config:    " + ", ".join(f"{k}={c[k]}" for k in (
                 "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta", "rms_norm_eps",
                 "tie_word_embeddings", "bos_token_id", "eos_token_ids")),
             f"tensors:   {len(listing.tensors)}"]
    width = max((len(t.name) for t in listing.tensors), default=4)
    lines.append(f"  {'name':<{width}}  {'dtype':<14} {'shape':<16} {'bytes':>12}")
    for t in listing.tensors:
        lines.append(f"  {t.name:<{width}}  {t.dtype:<14} {str(list(t.shape)):<16} {t.nbytes:>12,}")
    lines += [f"total:     {info['total_bytes']:,} bytes ({info['total_bytes'] / 2**20:.1f} MiB)",
              f"KV cache:  {info['kv_bytes_per_token']:,} bytes per token (fp32 K and V)",
              f"kernels:   {info['kernels']} (this CPU supports {', '.join(info['kernels_supported'])})",
              f"tokenizer: {info['tokenizer'] or 'none (token ids only)'}",
              "chat template: " + (repr(template) if template else
                                   f"none (built-in {info['chat_format_fallback']!r} format)" if tok else "none"),
              f"DLM:       mask token id {info['dlm']['mask_token_id']}, block size {info['dlm']['block_size']}, "
              f"shift {info['dlm']['shift']}"]
    _write("\n".join(lines) + "\n")
    return 0


# ------------------------------------------------------------------------------------- verify

def verify(argv: list[str]) -> int:
    from .verify import DEFAULT_TOLERANCE
    p = _parser("verify", "Compare this runtime's logits with HF transformers on the same checkpoint "
                          "(needs torch + transformers). Exit status 0 on parity, 1 otherwise; on a "
                          "mismatch the first layer whose hidden state diverges is named.",
                "  wrinklefree-rt verify ./hf-model\n"
                "  wrinklefree-rt verify ggml-model-i2_s.gguf --reference ./bitnet-b1.58-2B-4T-bf16\n"
                "  wrinklefree-rt verify model.gguf --prompts 5 --json")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--reference", help="HF directory to load in transformers instead (e.g. the checkpoint a "
                                       "GGUF was made from); default: the model itself, GGUF / .bin / .wfrt "
                                       "weights dequantized into an HF state dict")
    p.add_argument("--prompts", type=int, default=3, help="random token-id prompts to run (default 3)")
    p.add_argument("--prompt-len", type=int, default=24)
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"max logit error / logit scale for parity (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--i2s-layout", choices=["x86", "arm"], default="x86")
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    from tqdm import tqdm

    from .verify import format_report
    from .verify import verify as run_verify
    report = run_verify(args.model, args.reference, prompts=args.prompts, prompt_len=args.prompt_len,
                        tolerance=args.tolerance, i2s_layout=args.i2s_layout,
                        progress=lambda it, **kw: tqdm(it, disable=True if args.quiet else None, leave=False, **kw))
    _write((json.dumps(report.to_dict()) if args.json else format_report(report)) + "\n")
    return 0 if report.ok else 1


# -------------------------------------------------------------------------------------- bench

def bench(argv: list[str]) -> int:
    p = _parser("bench", "Measure this runtime on your model: tg (one token per step after a prompt), pp "
                         "(a whole prompt in one step) and batched rows per second (M rows per step, laid "
                         "out as DLM blocks). The same measuring code as bench/ (wrinklefree_rt.measure). "
                         "Medians of --reps runs; the machine's other load shows in the numbers.",
                "  wrinklefree-rt bench ggml-model-i2_s.gguf --threads 4\n"
                "  wrinklefree-rt bench ./model --rows 32,128 --json")
    _add_engine_args(p)
    p.add_argument("--tg", type=int, default=32, help="tokens to decode for tg (default 32)")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt before tg (default 64)")
    p.add_argument("--pp", type=int, default=256, help="prompt length for pp (default 256)")
    p.add_argument("--rows", default="32,64,128", help="batched rows per step (default 32,64,128)")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--json", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        rows = [int(r) for r in args.rows.split(",")]
    except ValueError:
        raise CliError(f"--rows {args.rows!r}: expected comma-separated integers") from None
    if args.reps < 1 or args.tg < 1 or args.pp < 1 or min(rows) < 1:
        raise CliError("--reps, --tg, --pp and --rows must be positive")

    import time

    from tqdm import tqdm

    from ._core import BitNetBatchEngine
    from .formats import load_model_dir
    from .measure import BLOCK, StepBench

    t0 = time.perf_counter()
    cfg, tensors = load_model_dir(args.model, args.i2s_layout, None if args.quiet else _load_bar)
    limit = cfg.max_position_embeddings
    tg_prompt, pp = min(args.prompt_len, limit - args.tg), min(args.pp, limit)
    if tg_prompt < 1:
        raise CliError(f"--tg {args.tg} does not fit the model's {limit} positions")
    seqs = max(-(-r // BLOCK) for r in rows)
    page = 32
    pages = -(-max(tg_prompt + args.tg, pp) // page) + seqs * -(-BLOCK // page)
    core = BitNetBatchEngine(cfg, tensors, num_threads=args.threads, max_slots=seqs + 1, kv_pages=pages,
                             page_size=page, lm_head=args.lm_head, ternary_packing=args.ternary_packing)
    del tensors
    sb = StepBench(core, time.perf_counter() - t0, cfg.vocab_size)
    samples: dict[str, list[float]] = {"tg": [], "pp": [], **{f"batched_{r}": [] for r in rows}}
    for r in rows:
        sb.forward(r, 1)  # warm-up: first use of the KV pages and buffers
    with tqdm(total=args.reps * (2 + len(rows)), desc="bench", unit="run", disable=True if args.quiet else None,
              leave=False) as bar:
        for _ in range(args.reps):  # interleaved, so drift hits every figure alike
            samples["tg"].append(args.tg / sb.tg(tg_prompt, args.tg))
            bar.update()
            samples["pp"].append(pp / sb.pp(pp))
            bar.update()
            for r in rows:
                samples[f"batched_{r}"].append(r / sb.forward(r, 1)[0])
                bar.update()
    result = {"model": args.model, "threads": core.num_threads, "kernels": core.isa,
              "ternary_plan": core.ternary_plan, "load_s": sb.load_s,
              "tg_prompt": tg_prompt, "tg_tokens": args.tg, "pp_tokens": pp, "reps": args.reps,
              "median_per_s": {k: statistics.median(v) for k, v in samples.items()}, "samples_per_s": samples}
    if args.json:
        _write(json.dumps(result) + "\n")
        return 0
    m = result["median_per_s"]
    lines = [f"model {args.model}: {core.num_threads} threads, kernels {core.isa}, loaded in {sb.load_s:.2f}s",
             f"ternary GEMM per row count: {core.ternary_plan}",
             f"tg  {args.tg} tokens after {tg_prompt}: {m['tg']:10.1f} tokens/s",
             f"pp  {pp} tokens:{'':>14}{m['pp']:10.1f} tokens/s"]
    lines += [f"batched {r:>4} rows/step:{'':>8}{m[f'batched_{r}']:10.1f} rows/s" for r in rows]
    lines.append(f"(medians of {args.reps} interleaved runs)")
    _write("\n".join(lines) + "\n")
    return 0


# --------------------------------------------------------------------------------------- main

def _usage() -> str:
    lines = ["usage: wrinklefree-rt COMMAND [options]   (COMMAND --help for its options and examples)", "",
             "commands:"]
    lines += [f"  {name:<16} {what}" for name, (what, _) in COMMANDS.items()]
    lines += ["", "--debug (anywhere): show the traceback of an error",
              "example: wrinklefree-rt chat ggml-model-i2_s.gguf"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from .errors import WrinklefreeError
    module, _, function = COMMANDS[argv[0]][1].partition(":")
    run = getattr(importlib.import_module(module), function)
    try:
        return run(argv[1:])
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except (CliError, WrinklefreeError, ValueError, OSError, RuntimeError, ImportError) as e:
        if debug:
            raise
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
