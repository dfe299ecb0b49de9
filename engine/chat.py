"""Chat formats: a model's own Jinja chat template, rendered the way transformers renders it.

    chat = ChatFormat(template, "<|im_start|>", "<|im_end|>", [2])
    prompt = chat.render([{"role": "user", "content": "Who is Anne Elliot?"}])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

# Used when a model carries no template of its own (base models, bare folders).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Tokens that end a turn in common families (ChatML, Llama 3, Phi, Gemma, Llama 2); generation
# stops on any of them that the vocabulary has, besides the model's eos.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end_of_text|>", "<|end|>", "<end_of_turn>", "</s>")


@dataclass
class ChatFormat:
    template: str
    bos_token: str
    eos_token: str
    stop_token_ids: list[int]

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return _compile(self.template).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )


@lru_cache(maxsize=8)
def _compile(template: str):
    """The template in a sandbox (templates come with downloaded models), with transformers' settings."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters, which would change the prompt.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def make_chat_format(
    template: str | None, tokenizer, bos_token: str | None, eos_token: str | None, eos_ids: list[int] = ()
) -> ChatFormat:
    """A ChatFormat from what a model folder says; `tokenizer` (a `tokenizers.Tokenizer`) gives the ids."""
    stop = list(eos_ids)
    if tokenizer is not None:
        for t in (eos_token, *END_OF_TURN_TOKENS):
            i = tokenizer.token_to_id(t) if t else None
            if i is not None and i not in stop:
                stop.append(i)
    return ChatFormat(template or CHATML_TEMPLATE, bos_token or "", eos_token or "", stop)


def _token_text(value) -> str | None:
    # tokenizer_config.json writes a special token as a string or as {"content": ..., ...}
    return value.get("content") if isinstance(value, dict) else value


def _template_text(value) -> str | None:
    # ... and a template as a string, or as a list of named templates of which "default" is the chat one
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value}
        return named.get("default") or next(iter(named.values()), None)
    return value


def read_chat_format(folder: Path, tokenizer, eos_token_id) -> ChatFormat:
    """The chat format of a Hugging Face folder: tokenizer_config.json (or chat_template.jinja),
    falling back to ChatML; eos from tokenizer_config.json or config.json's eos_token_id."""
    try:
        tc = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        tc = {}
    template = _template_text(tc.get("chat_template"))
    if template is None and (folder / "chat_template.jinja").is_file():
        template = (folder / "chat_template.jinja").read_text()
    eos_ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    eos = _token_text(tc.get("eos_token"))
    if eos is None and eos_ids and tokenizer is not None:
        eos = tokenizer.id_to_token(eos_ids[0])
    return make_chat_format(template, tokenizer, _token_text(tc.get("bos_token")), eos, eos_ids)
