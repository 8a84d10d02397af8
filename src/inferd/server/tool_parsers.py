"""Tool-call parsers: a model's output text → OpenAI ``tool_calls`` (whole, or as streaming deltas).

* ``hermes`` — Qwen2.5 / Qwen3 / Hermes: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks;
  content is the text before the first block.
* ``llama3_json`` — Llama 3.x: the output is ``{"name": ..., "parameters": {...}}`` (optionally after
  ``<|python_tag|>``), several separated by ``;``; anything else is content.
* ``NamedToolParser`` / ``RequiredToolParser`` — outputs forced by ``tool_choice`` (a named function, or
  ``required``) through a JSON-schema grammar: the arguments object, or ``[{"name", "parameters"}, ...]``.

Streaming deltas follow OpenAI: a call's first delta carries ``index``, ``id``, ``type`` and ``function.name``
(with ``arguments: ""``), later ones ``index`` and an ``arguments`` fragment; fragments concatenate to the call's
arguments JSON. One parser object per choice.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from inferd.server.reasoning import _partial_suffix

_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*')


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def make_call(name: str, arguments: str) -> dict[str, Any]:
    """A complete tool call as in a non-streamed message."""
    return {"id": new_call_id(), "type": "function", "function": {"name": name, "arguments": arguments}}


def _call_from_obj(obj: Any) -> dict[str, Any] | None:
    """``{"name": str, "arguments"|"parameters": ...}`` → a tool call; None for any other shape."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models send the arguments JSON as a string
        return make_call(obj["name"], args)
    return make_call(obj["name"], json.dumps(args, ensure_ascii=False))


class _JsonScanner:
    """Where one JSON value that starts at ``start`` (after optional whitespace) ends in a growing text."""

    def __init__(self, start: int = 0) -> None:
        self.pos = start
        self.end: int | None = None
        self._started = self._in_str = self._esc = self._scalar = False
        self._depth = 0

    def scan(self, text: str) -> int | None:
        """Scan what is new in ``text``; the index just past the value once it is complete, else None."""
        i, n = self.pos, len(text)
        while self.end is None and i < n:
            ch = text[i]
            if not self._started:
                if not ch.isspace():
                    self._started = True
                    self._depth = 1 if ch in "{[" else 0
                    self._in_str, self._scalar = ch == '"', ch not in '{["'
            elif self._in_str:
                if self._esc:
                    self._esc = False
                elif ch == "\\":
                    self._esc = True
                elif ch == '"':
                    self._in_str = False
                    if self._depth == 0:
                        self.end = i + 1
            elif self._scalar:
                if ch.isspace() or ch in ",;}]":
                    self.end = i
                    break
            elif ch == '"':
                self._in_str = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self.end = i + 1
            i += 1
        self.pos = i
        return self.end


class _CallStream:
    """One tool call's JSON object as it grows: its header once the name is known, then argument fragments."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.obj = _JsonScanner()
        self.args: _JsonScanner | None = None
        self.args_start = 0
        self.sent = 0  # end of the argument text emitted so far
        self.header_sent = False

    def update(self, text: str) -> list[dict[str, Any]]:
        """``text``: the call's object text so far (cumulative)."""
        out: list[dict[str, Any]] = []
        if not self.header_sent:
            m = _HEAD.match(text)
            if m is not None and m.end() < len(text):  # the arguments value has started (no whitespace left)
                try:
                    name = json.loads(f'"{m.group(1)}"')
                except ValueError:
                    name = m.group(1)
                out.append(self._header(name))
                self.args_start = self.sent = m.end()
                self.args = _JsonScanner(m.end())
        if self.args is not None:
            end = self.args.scan(text)
            upto = end if end is not None else len(text)
            if upto > self.sent:
                out.append({"index": self.index, "function": {"arguments": text[self.sent : upto]}})
                self.sent = upto
        self.obj.scan(text)
        return out

    def finish(self, text: str) -> list[dict[str, Any]]:
        """The call's text is complete: a call whose name never streamed (other key order) is sent whole."""
        if self.header_sent:
            return []
        end = self.obj.end if self.obj.end is not None else len(text)
        try:
            call = _call_from_obj(json.loads(text[:end]))
        except ValueError:
            return []
        if call is None:
            return []
        return [self._header(call["function"]["name"], call["function"]["arguments"])]

    def _header(self, name: str, arguments: str = "") -> dict[str, Any]:
        self.header_sent = True
        return {
            "index": self.index,
            "id": new_call_id(),
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }


def merge_call_deltas(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive deltas of one call merged into one entry (arguments concatenated)."""
    out: list[dict[str, Any]] = []
    for d in deltas:
        if out and out[-1]["index"] == d["index"] and "id" not in d:
            fn = out[-1]["function"]
            fn["arguments"] = fn.get("arguments", "") + d["function"].get("arguments", "")
        else:
            out.append({**d, "function": dict(d["function"])})
    return out


class ToolParser:
    """Base: ``feed`` / ``finish`` for streaming (content delta, tool-call deltas); ``extract`` for whole text."""

    def __init__(self) -> None:
        self._buf = ""
        self.num_calls = 0  # calls started while streaming
        self._pos = 0  # where parsing of _buf continues
        self._call: _CallStream | None = None  # the call being streamed
        self._call_start = 0  # where its text starts in _buf
        self._stopped = False  # no more calls will follow

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        self._buf += text
        content, deltas = self._step(final=False)
        return content, merge_call_deltas(deltas)

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        content, deltas = self._step(final=True)
        return content, merge_call_deltas(deltas)

    def extract(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """(content or None, complete tool calls) of a whole output."""
        raise NotImplementedError

    def _step(self, final: bool) -> tuple[str, list[dict[str, Any]]]:
        raise NotImplementedError

    def _stream_objects(self, pos: int, separators: str, closer: str, final: bool) -> tuple[int, list[dict]]:
        """Stream ``{...}`` call objects from ``pos`` separated by whitespace and ``separators``; stop (for good)
        at ``closer`` or any other character. Returns the new position and the deltas."""
        deltas: list[dict[str, Any]] = []
        buf = self._buf
        while True:
            call = self._call
            if call is None:
                while pos < len(buf) and (buf[pos].isspace() or buf[pos] in separators):
                    pos += 1
                if pos >= len(buf):
                    return pos, deltas
                if buf[pos] != "{":
                    self._stopped = True
                    return len(buf), deltas
                call = self._call = _CallStream(self.num_calls)
                self.num_calls += 1
                self._call_start = pos
            text = buf[self._call_start :]
            deltas += call.update(text)
            if call.obj.end is None and not final:
                return len(buf), deltas
            deltas += call.finish(text)
            self._call = None
            pos = self._call_start + (call.obj.end if call.obj.end is not None else len(text))
            if closer and pos < len(buf) and buf[pos:].lstrip().startswith(closer):
                self._stopped = True
                return len(buf), deltas
            if call.obj.end is None:
                return len(buf), deltas


class HermesToolParser(ToolParser):
    start_tag, end_tag = "<tool_call>", "</tool_call>"
    _BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)\Z", re.DOTALL)

    def extract(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        if self.start_tag not in text:
            return text or None, []
        calls = []
        for m in self._BLOCK.finditer(text):
            try:
                call = _call_from_obj(json.loads((m.group(1) or m.group(2) or "").strip()))
            except ValueError:
                call = None
            if call is None:
                return text, []  # a malformed block: the whole output stays content
            calls.append(call)
        content = text[: text.index(self.start_tag)]
        return content or None, calls

    def _step(self, final: bool) -> tuple[str, list[dict[str, Any]]]:
        content, deltas, buf = "", [], self._buf
        while True:
            if self._call is None:
                i = buf.find(self.start_tag, self._pos)
                if i < 0:
                    keep = 0 if final else _partial_suffix(buf[self._pos :], self.start_tag)
                    if self.num_calls == 0:  # text between or after calls is not content
                        content += buf[self._pos : len(buf) - keep]
                    self._pos = len(buf) - keep
                    return content, deltas
                if self.num_calls == 0:
                    content += buf[self._pos : i]
                self._call = _CallStream(self.num_calls)
                self.num_calls += 1
                self._call_start = self._pos = i + len(self.start_tag)
            end = buf.find(self.end_tag, self._call_start)
            text = buf[self._call_start : end if end >= 0 else len(buf)]
            deltas += self._call.update(text)
            if end < 0 and not final:
                return content, deltas
            deltas += self._call.finish(text)
            self._call = None
            if end < 0:
                return content, deltas
            self._pos = end + len(self.end_tag)


class Llama3JsonToolParser(ToolParser):
    python_tag = "<|python_tag|>"

    def __init__(self) -> None:
        super().__init__()
        self._mode = "undecided"  # | "content" | "calls"

    def extract(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        body = text.lstrip().removeprefix(self.python_tag).lstrip()
        if not body.startswith("{"):
            return text or None, []
        decoder, calls, pos = json.JSONDecoder(), [], 0
        try:
            while pos < len(body):
                obj, pos = decoder.raw_decode(body, pos)
                call = _call_from_obj(obj)
                if call is None:
                    return text, []
                calls.append(call)
                rest = body[pos:].lstrip()
                if not rest.startswith(";"):
                    break
                pos = len(body) - len(rest) + 1
                while pos < len(body) and body[pos].isspace():
                    pos += 1
        except ValueError:
            return text, []
        return None, calls

    def _step(self, final: bool) -> tuple[str, list[dict[str, Any]]]:
        buf = self._buf
        if self._mode == "undecided":
            stripped = buf.lstrip()
            if stripped.startswith(self.python_tag):
                self._mode, self._pos = "calls", len(buf) - len(stripped) + len(self.python_tag)
            elif stripped.startswith("{"):
                self._mode, self._pos = "calls", len(buf) - len(stripped)
            elif not final and self.python_tag.startswith(stripped):
                return "", []
            else:
                self._mode = "content"
        if self._mode == "content":
            content, self._pos = buf[self._pos :], len(buf)
            return content, []
        if self._stopped:
            return "", []
        self._pos, deltas = self._stream_objects(self._pos, ";", "", final)
        return "", deltas


class RequiredToolParser(ToolParser):
    """``tool_choice: "required"``: the grammar forces ``[{"name": ..., "parameters": {...}}, ...]``."""

    def __init__(self) -> None:
        super().__init__()
        self._pos = -1  # before the opening bracket

    def extract(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        try:
            items = json.loads(text)
        except ValueError:
            return text or None, []
        calls = [_call_from_obj(item) for item in items] if isinstance(items, list) else [None]
        if not calls or any(c is None for c in calls):
            return text or None, []
        return None, calls  # type: ignore[return-value]

    def _step(self, final: bool) -> tuple[str, list[dict[str, Any]]]:
        if self._pos < 0:
            i = self._buf.find("[")
            if i < 0:
                return "", []
            self._pos = i + 1
        if self._stopped:
            return "", []
        self._pos, deltas = self._stream_objects(self._pos, ",", "]", final)
        return "", deltas


class NamedToolParser(ToolParser):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``: the whole output is the arguments (no
    call when the output is empty, e.g. cut off while reasoning)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._sent = 0

    def extract(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        return (None, [make_call(self.name, text)]) if text.strip() else (None, [])

    def _step(self, final: bool) -> tuple[str, list[dict[str, Any]]]:
        deltas: list[dict[str, Any]] = []
        if self.num_calls == 0:
            if not self._buf.strip():
                return "", []
            self.num_calls = 1
            deltas.append(
                {
                    "index": 0,
                    "id": new_call_id(),
                    "type": "function",
                    "function": {"name": self.name, "arguments": ""},
                }
            )
        if len(self._buf) > self._sent:
            deltas.append({"index": 0, "function": {"arguments": self._buf[self._sent :]}})
            self._sent = len(self._buf)
        return "", deltas


TOOL_PARSERS: dict[str, type[ToolParser]] = {"hermes": HermesToolParser, "llama3_json": Llama3JsonToolParser}
