"""Structured-output constraints → xgrammar grammars: validation (no tokenizer) and compilation (with one).

The same ``GrammarSpec`` is used by the frontend, which checks a request before it is queued, and by the worker,
which compiles it against the model's vocabulary, so both agree on what a constraint means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import xgrammar as xgr

    from inferd.sampling_params import StructuredOutputsParams

# Longest run of free whitespace a JSON grammar allows (xgrammar's ``any_whitespace`` is otherwise unbounded and
# small models can loop on it); enough for pretty-printed JSON nested several levels deep.
MAX_WHITESPACE_RUN = 16
_KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass(frozen=True, slots=True)
class GrammarSpec:
    """One constraint in canonical form; equal specs compile to the same grammar (the cache key)."""

    kind: str  # "json" | "regex" | "choice" | "grammar" | "lark"
    text: str  # JSON schema text, regex, EBNF or Lark source (choice: the EBNF built from the choices)
    any_whitespace: bool = True
    strict: bool = True  # JSON: additionalProperties defaults to false (vLLM's xgrammar behaviour)


def _error(field: str, message: str) -> ValueError:
    return ValueError(f"structured_outputs{'.' + field if field else ''} {message}")


def spec_of(params: StructuredOutputsParams) -> GrammarSpec:
    """The canonical spec of ``params``; raises ValueError (message starting with ``structured_outputs``) when it
    names no constraint, several, or one of the wrong type. Does not check that the constraint compiles."""
    given = [k for k in _KINDS if getattr(params, k) not in (None, False)]
    if not given:
        raise _error("", f"needs exactly one of {', '.join(_KINDS)}; none was given.")
    if len(given) > 1:
        raise _error("", f"takes exactly one of {', '.join(_KINDS)}; got {', '.join(given)}.")
    kind = given[0]
    value: Any = getattr(params, kind)
    any_ws = not params.disable_any_whitespace
    if kind == "json":
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as e:
                raise _error("json", f"is not valid JSON: {e}.") from None
        if not isinstance(value, (dict, bool)):
            raise _error("json", f"must be a JSON schema object; got {type(value).__name__}.")
        value = _safe_length_strings(value)
        return GrammarSpec("json", json.dumps(value, ensure_ascii=False, sort_keys=True), any_ws)
    if kind == "json_object":
        if value is not True:
            raise _error("json_object", "must be true or left unset.")
        return GrammarSpec("json", '{"type": "object"}', any_ws, strict=False)
    if kind == "choice":
        if not isinstance(value, (list, tuple)) or not value:
            raise _error("choice", "must be a non-empty list of strings.")
        bad = next((c for c in value if not isinstance(c, str) or not c), None)
        if bad is not None:
            raise _error("choice", f"entries must be non-empty strings; got {bad!r}.")
        literals = " | ".join(json.dumps(c, ensure_ascii=False) for c in dict.fromkeys(value))
        return GrammarSpec("choice", f"root ::= {literals}")
    if not isinstance(value, str) or not value.strip():
        raise _error(kind, "must be a non-empty string.")
    if kind == "grammar" and _looks_like_lark(value):
        return GrammarSpec("lark", value)
    return GrammarSpec(kind, value)


def _safe_length_strings(schema: Any) -> Any:
    """A copy of ``schema`` whose length-limited strings use an equivalent ``pattern``.

    xgrammar (0.2) lets ``minLength`` / ``maxLength`` strings hold raw control characters, which is not valid JSON;
    its ``pattern`` strings exclude them (and quotes and backslashes, which would need escapes), so the output
    still satisfies the original schema.
    """
    if isinstance(schema, list):
        return [_safe_length_strings(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k in _DATA_KEYS else _safe_length_strings(v) for k, v in schema.items()}
    limited = "minLength" in out or "maxLength" in out
    if out.get("type") == "string" and limited and not _STRING_CONSTRAINTS & out.keys():
        low, high = out.pop("minLength", 0), out.pop("maxLength", "")
        out["pattern"] = f"^.{{{low},{high}}}$"
    return out


_DATA_KEYS = frozenset({"enum", "const", "default", "examples"})  # values, not schemas
_STRING_CONSTRAINTS = frozenset({"pattern", "format", "enum", "const"})


def _looks_like_lark(text: str) -> bool:
    """EBNF rules use ``::=``; Lark rules ``name: ...`` with a ``start`` rule."""
    return "::=" not in text and any(
        line.strip().startswith(("start:", "?start:")) for line in text.splitlines()
    )


def build_grammar(spec: GrammarSpec) -> xgr.Grammar:
    """The tokenizer-independent grammar of ``spec``; raises ValueError saying what does not compile."""
    import xgrammar as xgr

    try:
        if spec.kind == "json":
            return xgr.Grammar.from_json_schema(spec.text, **_json_options(spec))
        if spec.kind == "regex":
            return xgr.Grammar.from_regex(spec.text)
        if spec.kind == "lark":
            return xgr.Grammar.from_lark(spec.text)
        return xgr.Grammar.from_ebnf(spec.text)
    except (RuntimeError, ValueError, TypeError) as e:
        field = {"json": "json", "regex": "regex", "choice": "choice"}.get(spec.kind, "grammar")
        what = {"json": "a valid JSON schema", "regex": "a valid regex", "choice": "a valid choice list"}
        raise _error(field, f"is not {what.get(spec.kind, 'a valid grammar')}: {_clean(e)}") from None


def compile_spec(compiler: xgr.GrammarCompiler, spec: GrammarSpec) -> xgr.CompiledGrammar:
    """Compile ``spec`` for the compiler's vocabulary (xgrammar caches compiled grammars by their source)."""
    if spec.kind == "json":
        return compiler.compile_json_schema(spec.text, **_json_options(spec))
    if spec.kind == "regex":
        return compiler.compile_regex(spec.text)
    return compiler.compile_grammar(build_grammar(spec))


def validate_structured_outputs(params: StructuredOutputsParams) -> None:
    """Raise ValueError (starting with ``structured_outputs``) unless ``params`` names one constraint that
    compiles."""
    if params.reasoning_token_ids is not None:
        ids = params.reasoning_token_ids
        if not (isinstance(ids, tuple) and len(ids) == 2 and all(isinstance(t, int) and t >= 0 for t in ids)):
            raise _error("reasoning_token_ids", f"must be a (start, end) pair of token ids; got {ids!r}.")
    build_grammar(spec_of(params))


def _json_options(spec: GrammarSpec) -> dict[str, Any]:
    if spec.any_whitespace:
        return {"any_whitespace": True, "max_whitespace_cnt": MAX_WHITESPACE_RUN, "strict_mode": spec.strict}
    return {"any_whitespace": False, "strict_mode": spec.strict}


def _clean(e: BaseException) -> str:
    """xgrammar's message without its ``[time] file.cc:line:`` prefix."""
    text = str(e).strip()
    if text.startswith("[") and ": " in text:
        _, _, rest = text.partition("] ")
        text = rest.split(": ", 1)[1] if ".cc:" in rest.split(": ", 1)[0] else rest
    return text.rstrip(".") + "."
