"""Chat messages → prompt text through the model's (or ``--chat-template``'s) Jinja template.

Rendering goes through ``tokenizer.apply_chat_template``, which runs the template in jinja2's immutable sandbox, as
transformers does for every model.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from inferd.server.errors import bad_request
from inferd.server.protocol import ChatMessage

# apply_chat_template's own arguments; a request cannot pass these through chat_template_kwargs.
_RESERVED_KWARGS = frozenset(
    {
        "conversation",
        "messages",
        "tools",
        "documents",
        "chat_template",
        "tokenize",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
        "add_generation_prompt",
        "continue_final_message",
    }
)


def load_chat_template(value: str | None) -> str | None:
    """``--chat-template``: a file's contents, or the argument itself when it is an inline template.

    Raises ValueError when a file-looking argument does not exist or the template does not compile.
    """
    if value is None:
        return None
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            template = f.read()
    elif "{" not in value and (os.sep in value or value.endswith((".jinja", ".jinja2", ".j2"))):
        raise ValueError(
            f"chat template file {value!r} does not exist; pass a readable file or an inline template."
        )
    else:
        template = value
    try:
        _compile(template)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"chat template does not compile: {e.message} (line {e.lineno}).") from None
    return template


def _compile(template: str) -> None:
    try:  # the environment transformers renders with (its extensions and filters)
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.parse(template)
    else:
        _compile_jinja_template(template)


def to_template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """OpenAI messages → the dicts templates expect; text parts are joined with newlines; assistant tool-call
    ``arguments`` JSON strings become objects (templates such as Llama 3's and Qwen2.5's apply ``tojson``).

    Raises a 400 ``APIError`` naming the part for anything but text content.
    """
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        d = msg.model_dump(exclude_none=True)
        content = msg.content
        if isinstance(content, list):
            texts: list[str] = []
            for j, part in enumerate(content):
                kind = part.get("type")
                if kind != "text" or not isinstance(part.get("text"), str):
                    raise bad_request(
                        f"Only text content parts are supported; messages[{i}].content[{j}] has type {kind!r}.",
                        param=f"messages[{i}].content[{j}].type",
                    )
                texts.append(part["text"])
            d["content"] = "\n".join(texts)
        elif content is None:
            d["content"] = ""
        if d["role"] == "developer":
            d["role"] = "system"  # OpenAI's newer name for system; model templates know only "system"
        for call in d.get("tool_calls") or ():
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                try:
                    fn["arguments"] = json.loads(fn["arguments"])
                except ValueError:
                    pass  # not JSON: the template gets the text
        out.append(d)
    return out


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    chat_template: str | None,
    add_generation_prompt: bool,
    continue_final_message: bool,
    template_kwargs: dict[str, Any] | None,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """The prompt text for ``messages`` (and ``tools``, as the template renders them); raises a 400 ``APIError``
    when the template refuses them."""
    if tokenizer is None:
        raise bad_request(
            "This model has no tokenizer, so chat requests cannot be served; use token ids with "
            "/v1/completions.",
            param="messages",
        )
    kwargs = dict(template_kwargs or {})
    reserved = sorted(_RESERVED_KWARGS & kwargs.keys())
    if reserved:
        raise bad_request(
            f"chat_template_kwargs cannot set {', '.join(reserved)}; use the request fields instead.",
            param="chat_template_kwargs",
        )
    template = chat_template
    if template is None and not getattr(tokenizer, "chat_template", None):
        raise bad_request(
            "This model has no chat template; start the server with --chat-template or use /v1/completions.",
            param="messages",
        )
    try:
        text = tokenizer.apply_chat_template(
            messages,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tokenize=False,
            tools=tools,
            **kwargs,
        )
    except jinja2.TemplateError as e:
        raise bad_request(f"The chat template rejected the messages: {e}", param="messages") from None
    except ValueError as e:
        raise bad_request(f"Could not apply the chat template: {e}", param="messages") from None
    if not isinstance(text, str):  # some tokenizer versions wrap a single rendering in a list
        text = text[0]
    return text
