"""``wrinklefree-rt convert SRC DST``: any checkpoint this runtime reads -> its own packed format.

DST is a directory (it receives ``model.wfrt`` plus SRC's tokenizer and config files, or for
a GGUF source the tokenizer rebuilt from its vocabulary, so it is a complete model directory
for ``Engine.from_pretrained``) or a path ending in ``.wfrt`` (the packed file alone).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from .errors import ModelFormatError
from .formats import open_model, single_file_format
from .formats.canonical import canonical_names
from .formats.gguf_vocab import UnsupportedVocabularyError, gguf_tokenizer_files
from .formats.packed import PACKED_FILE, write_packed

__all__ = ["main", "convert"]

# Files beside the weights that a model directory needs at run time.
_SIDE_FILES = ("config.json", "dlm_config.json", "generation_config.json", "tokenizer.json",
               "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def convert(src: str | Path, dst: str | Path, progress_stream: TextIO | None = None) -> Path:
    """Convert ``src`` (anything ``load_model_dir`` reads); returns the path of the written
    ``.wfrt`` file."""
    src, dst = Path(src), Path(dst)
    cfg, tensors = open_model(src)
    if dst.suffix == ".wfrt":
        dst.parent.mkdir(parents=True, exist_ok=True)
        out = dst
    else:
        dst.mkdir(parents=True, exist_ok=True)
        out = dst / PACKED_FILE
        if src.is_dir() and dst.resolve() != src.resolve():
            for name in _SIDE_FILES:
                if (src / name).is_file():
                    shutil.copyfile(src / name, dst / name)
    # one step per canonical tensor, plus the int8 head
    with tqdm(total=len(canonical_names(cfg)) + 2, file=progress_stream, disable=progress_stream is None,
              desc="convert", unit="tensor") as bar:
        def progress(name: str, nbytes: int) -> None:
            bar.set_postfix_str(f"{name} ({nbytes / 2**20:.1f} MiB)", refresh=False)
            bar.update()

        write_packed(out, cfg, tensors, source=str(src), progress=progress)
    if out.parent == dst and single_file_format(src) == "gguf":
        _write_gguf_tokenizer(src, dst, progress_stream)
    return out


def _write_gguf_tokenizer(src: Path, dst: Path, stream: TextIO | None) -> None:
    """A GGUF carries its vocabulary: rebuild tokenizer files so that DST is a complete model
    directory, or say why not (a model is still usable with token ids)."""
    try:
        files = gguf_tokenizer_files(src)
    except UnsupportedVocabularyError as e:
        if stream:
            print(f"note: no tokenizer written: {e}", file=stream)
        return
    for name, content in files.items():
        (dst / name).write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="wrinklefree-rt convert",
        description="Convert a BitNet checkpoint to the runtime's packed format.")
    parser.add_argument("src", help="HF model directory (config.json + model.safetensors or a sharded "
                                    "index, online or offline), a BitNet GGUF file or a SGLBITNT .bin")
    parser.add_argument("dst", help="output directory (gets model.wfrt + tokenizer files) or a .wfrt file")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        out = convert(args.src, args.dst, None if args.quiet else sys.stderr)
    except ModelFormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        size = out.stat().st_size
        print(f"wrote {out} ({size / 2**20:.1f} MiB) in {time.monotonic() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
