"""The built-in model's tokenizer and chat template against transformers, and chat formats of folders."""

import json

import jinja2
import pytest

from infini_reader.app.core.builtin import model_path
from infini_reader.engine.chat import CHATML_TEMPLATE, ChatFormat, make_chat_format, read_chat_format

transformers = pytest.importorskip("transformers")

CONVERSATIONS = [
    [{"role": "system", "content": "You answer in one sentence."},
     {"role": "user", "content": "Who is Anne Elliot?"}],
    [{"role": "user", "content": "Hi!"},
     {"role": "assistant", "content": "Hello. How can I help?"},
     {"role": "user", "content": "Summarize chapter 1 of *Persuasion*, please."}],
]

TEXTS = [
    "Hello world 2024, naïve café!\n\n  x",
    "<|im_start|>user\nHi<|im_end|>\n",
    "   leading spaces\ttabs\r\nand CRLF",
    "价格是 3.14159 元 🙂 — “quotes”",
    "It's 12:30pm; we'll see... OK?",
    "",
    "<think>reason</think> 1234567890",
]


@pytest.fixture(scope="module")
def hf_tokenizer():
    """transformers' tokenizer built from the same GGUF file."""
    path = model_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.parametrize("text", TEXTS)
def test_builtin_tokenizer_matches_transformers_and_round_trips(builtin_engine_f32, hf_tokenizer, text):
    tok = builtin_engine_f32.tokenizer
    ids = tok.encode(text).ids
    assert ids == hf_tokenizer(text)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=False) == text
    assert hf_tokenizer.decode(ids) == text


def test_builtin_vocabulary_and_special_tokens_match_transformers(builtin_engine_f32, hf_tokenizer):
    ours = json.loads(builtin_engine_f32.tokenizer_json)
    theirs = json.loads(hf_tokenizer.backend_tokenizer.to_str())
    assert ours["model"]["vocab"] == theirs["model"]["vocab"]
    assert ours["model"]["merges"] == theirs["model"]["merges"]
    assert ours["added_tokens"] == theirs["added_tokens"]
    # "<|im_end|>" in a document is one special token, and decoding can drop it
    tok = builtin_engine_f32.tokenizer
    assert tok.encode("a<|im_end|>b").ids == [tok.token_to_id("a"), 2, tok.token_to_id("b")]
    assert tok.decode([2, tok.token_to_id("a")], skip_special_tokens=True) == "a"


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_builtin_chat_template_matches_transformers(builtin_engine_f32, hf_tokenizer, messages, add_generation_prompt):
    chat = builtin_engine_f32.chat
    expected = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert chat.render(messages, add_generation_prompt=add_generation_prompt) == expected


def test_builtin_chat_format(builtin_engine_f32):
    chat = builtin_engine_f32.chat
    assert (chat.bos_token, chat.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert chat.stop_token_ids == [2, 0]  # <|im_end|> (eos), <|endoftext|>
    prompt = chat.render([{"role": "user", "content": "Hi"}])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_fallback_chatml_and_stop_tokens():
    chat = make_chat_format(None, None, None, None)
    assert chat.template == CHATML_TEMPLATE and chat.stop_token_ids == []
    text = chat.render([{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert chat.render([{"role": "user", "content": "Hi"}], add_generation_prompt=False) == "<|im_start|>user\nHi<|im_end|>\n"


def test_templates_run_sandboxed_with_raise_exception():
    chat = ChatFormat("{{ raise_exception('only user and assistant roles') }}", "", "", [])
    with pytest.raises(jinja2.TemplateError, match="only user and assistant"):
        chat.render([{"role": "user", "content": "x"}])
    sneaky = ChatFormat("{{ messages.__class__.__mro__[1].__subclasses__() }}", "", "", [])
    with pytest.raises(jinja2.exceptions.SecurityError):
        sneaky.render([])
    # trim_blocks / lstrip_blocks as in transformers: block tags leave no blank lines behind
    blocks = ChatFormat("{% for m in messages %}\n  {{ m.content }}|{{ bos_token }}\n{% endfor %}", "<s>", "</s>", [])
    assert blocks.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]) == "  a|<s>\n  b|<s>\n"


def test_folder_chat_format_from_tokenizer_config(tmp_path, builtin_engine_f32):
    tok = builtin_engine_f32.tokenizer
    template = "{{ bos_token }}{% for m in messages %}[{{ m.role }}] {{ m.content }}{{ eos_token }}{% endfor %}"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": template}],
        "bos_token": {"content": "<|im_start|>", "special": True}, "eos_token": "<|endoftext|>",
    }))
    chat = read_chat_format(tmp_path, tok, eos_token_id=[2, 0])
    assert chat.render([{"role": "user", "content": "hi"}]) == "<|im_start|>[user] hi<|endoftext|>"
    assert chat.stop_token_ids == [2, 0]
    # no tokenizer_config.json: chat_template.jinja (transformers 5 writes it), eos from config.json's id
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "chat_template.jinja").write_text(template)
    chat = read_chat_format(tmp_path, tok, eos_token_id=2)
    assert chat.template == template and chat.eos_token == "<|im_end|>" and chat.stop_token_ids == [2, 0]
    (tmp_path / "chat_template.jinja").unlink()
    assert read_chat_format(tmp_path, tok, eos_token_id=None).template == CHATML_TEMPLATE
