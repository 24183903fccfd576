"""``wrinklefree-rt``: demo | generate | convert | scheduler-bench | serve."""
from __future__ import annotations

import argparse
import sys

import anyio

__all__ = ["main"]


def _generate(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wrinklefree-rt generate",
                                     description="Stream one completion from a model directory.")
    parser.add_argument("model", help="model directory (HF safetensors or converted) with tokenizer.json")
    parser.add_argument("prompt", help="prompt text (a user message with --chat)")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat format")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true")
    parser.add_argument("--dlm", action="store_true", help="block-diffusion decoding")
    parser.add_argument("--block-size", type=int)
    parser.add_argument("--sub-block-size", type=int)
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--lm-head", choices=["int8", "fp32"], default="int8")
    parser.add_argument("--stats", action="store_true", help="print request metrics to stderr")
    args = parser.parse_args(argv)

    from .engine import Engine
    from .errors import WrinklefreeError
    from .params import DiffusionParams, SamplingParams

    try:
        engine = Engine.from_pretrained(args.model, num_threads=args.threads, lm_head=args.lm_head,
                                        max_num_seqs=1)
        params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                top_k=args.top_k, seed=args.seed, stop=args.stop, ignore_eos=args.ignore_eos)
        diffusion = DiffusionParams(block_size=args.block_size, sub_block_size=args.sub_block_size,
                                    threshold=args.threshold) if args.dlm else None
        prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt

        async def run():
            async with engine:
                shown = 0
                async for out in engine.generate_async(prompt, params, diffusion=diffusion):
                    sys.stdout.write(out.text[shown:])
                    sys.stdout.flush()
                    shown = len(out.text)
                sys.stdout.write("\n")
                if args.stats:
                    m = out.metrics
                    print(f"{len(out.token_ids)} tokens ({out.finish_reason}), {m.forwards} forwards, "
                          f"ttft {m.ttft * 1e3:.1f} ms, {m.tokens_per_s:.1f} tokens/s", file=sys.stderr)

        anyio.run(run)
    except (WrinklefreeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"demo": "run concurrent AR and DLM requests on a random model (no download)",
                "generate": "stream a completion from a model directory",
                "convert": "convert a checkpoint to the runtime's packed format",
                "scheduler-bench": "measure the scheduler with N concurrent DLM requests",
                "serve": "serve a model over an OpenAI-compatible HTTP API"}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print("usage: wrinklefree-rt {" + ",".join(commands) + "} ...\n")
        for name, what in commands.items():
            print(f"  {name:<16} {what}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    command, rest = argv[0], argv[1:]
    if command == "demo":
        from .demo import main as run
    elif command == "scheduler-bench":
        from .demo import bench_main as run
    elif command == "convert":
        from .convert import main as run
    elif command == "serve":
        from .server.cli import main as run
    else:
        run = _generate
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
