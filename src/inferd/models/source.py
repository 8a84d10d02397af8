"""Where a model comes from: a local folder, a ``.gguf`` file or a Hugging Face hub id.

``resolve_model_source`` turns what the user named into local files (config, tokenizer, generation config) and a
resolved load format; weight files are fetched later by ``weight_utils.download_weights`` / ``iter_weights``.
Hub access goes through ``huggingface_hub`` only, so HF_TOKEN, HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE work as in
every Hugging Face tool; with HF_HUB_OFFLINE=1 (read by huggingface_hub at import) no network call is made.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferd.config import LOAD_FORMATS
from inferd.models.native_config import native_config
from inferd.models.weight_utils import check_safetensors_present, hub_offline, hub_snapshot, list_hub_files

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
TOKENIZER_PATTERNS = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "*.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates/*",
]
# Files whose presence means a folder holds a tokenizer.
_TOKENIZER_MARKERS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "spiece.model",
    "vocab.json",
)
# Hub files fetched by resolve_model_source: everything but the weights (the index is small and names the shards).
METADATA_PATTERNS = [CONFIG_FILE, GENERATION_CONFIG_FILE, "*.safetensors.index.json", *TOKENIZER_PATTERNS]
_DTYPES = ("bfloat16", "float16", "float32")
_GENERATION_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


@dataclass(frozen=True)
class ModelSource:
    """A model resolved to local files. ``path`` always exists locally; weights may still be on the hub.

    ``tokenizer`` is a local folder or a local ``.gguf`` file (hub tokenizers are downloaded at resolve time), or
    None when there is no tokenizer. For hub models ``hub_repo_id``/``hub_commit`` pin the snapshot that config and
    weights both come from.
    """

    model: str  # as the user named it
    path: str  # local folder holding config (+ weights); for GGUF the folder of the file
    load_format: str  # resolved: "safetensors" | "gguf" | "dummy"
    hf_config: Any = field(repr=False)  # a transformers config, or a NativeConfig (models/native_config.py)
    checkpoint_dtype: str | None  # "bfloat16" | "float16" | "float32" from config.json; None for GGUF
    gguf_file: str | None  # absolute path of the .gguf file
    tokenizer: str | None  # what load_tokenizer loads: local folder or .gguf file; None if there is none
    revision: str | None
    tokenizer_revision: str | None
    download_dir: str | None
    generation_config: dict[str, Any] = field(repr=False)  # raw generation_config.json, {} when absent
    trust_remote_code: bool = False
    hub_repo_id: str | None = None  # set when the model comes from the hub
    hub_commit: str | None = None  # commit of the hub snapshot in ``path``


def resolve_model_source(
    model: str,
    *,
    revision: str | None = None,
    download_dir: str | None = None,
    load_format: str = "auto",
    tokenizer: str | None = None,
    tokenizer_revision: str | None = None,
    trust_remote_code: bool = False,
) -> ModelSource:
    """Resolve ``model`` (folder, ``.gguf`` file, folder holding one ``.gguf``, or hub id ``org/name``).

    Downloads only config, generation config and tokenizer files from the hub. Raises ``ValueError`` saying what
    was expected when the model, its config or its weights cannot be found or are in an unsupported format.
    """
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"load_format must be one of {', '.join(LOAD_FORMATS)}; got {load_format!r}.")
    if download_dir is not None:
        download_dir = os.path.abspath(os.path.expanduser(download_dir))
    common: dict[str, Any] = dict(
        model=model,
        revision=revision,
        tokenizer_revision=tokenizer_revision,
        download_dir=download_dir,
        trust_remote_code=trust_remote_code,
    )
    local = os.path.abspath(os.path.expanduser(model))
    if os.path.isfile(local):
        if not local.endswith(".gguf"):
            raise ValueError(
                f"{model!r} is a file but not a .gguf file; pass a .gguf file, a folder with config.json and "
                "*.safetensors, or a hub id."
            )
        if load_format == "safetensors":
            raise ValueError(f"{model!r} is a GGUF file; use load_format='gguf' or 'auto'.")
        source = _gguf_source(local, load_format, common)
    elif os.path.isdir(local):
        source = _folder_source(local, load_format, common)
    elif model.endswith(".gguf"):
        raise ValueError(f"GGUF file {model!r} does not exist; download it and pass its local path.")
    elif _looks_like_path(model):
        raise ValueError(
            f"Model folder {model!r} does not exist; pass an existing folder, a .gguf file or a hub id."
        )
    else:
        source = _hub_source(model, load_format, common)
    tok = _resolve_tokenizer(tokenizer, source, download_dir)
    if tok != source.tokenizer:
        source = dataclasses.replace(source, tokenizer=tok)
    return source


def _looks_like_path(name: str) -> bool:
    """True for names that can only be paths (hub ids are ``name`` or ``org/name``)."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def _folder_source(folder: str, load_format: str, common: dict[str, Any]) -> ModelSource:
    ggufs = sorted(p.name for p in Path(folder).glob("*.gguf"))
    has_config = os.path.isfile(os.path.join(folder, CONFIG_FILE))
    if load_format == "gguf" or (load_format == "auto" and not has_config and ggufs):
        if not ggufs:
            raise ValueError(
                f"load_format='gguf' but {folder} holds no .gguf file; pass the .gguf file path."
            )
        if len(ggufs) > 1:
            raise ValueError(
                f"{folder} holds several .gguf files ({', '.join(ggufs)}); pass the path of the one to serve."
            )
        return _gguf_source(os.path.join(folder, ggufs[0]), load_format, common)
    if not has_config:
        raise ValueError(
            f"{folder} has no config.json; pass a folder saved with save_pretrained (config.json + *.safetensors), "
            "a .gguf file, or a hub id."
        )
    if load_format != "dummy":
        check_safetensors_present(os.listdir(folder), where=folder)
    return _config_folder_source(folder, load_format, common)


def _config_folder_source(folder: str, load_format: str, common: dict[str, Any], **hub: Any) -> ModelSource:
    """A folder holding config.json (+ safetensors unless dummy), tokenizer and generation config files."""
    hf_config, raw = _load_config(folder, common["trust_remote_code"])
    return ModelSource(
        path=folder,
        load_format="dummy" if load_format == "dummy" else "safetensors",
        hf_config=hf_config,
        checkpoint_dtype=_checkpoint_dtype(raw),
        gguf_file=None,
        tokenizer=folder if _has_tokenizer(folder) else None,
        generation_config=_read_json(os.path.join(folder, GENERATION_CONFIG_FILE)),
        **hub,
        **common,
    )


def _gguf_source(gguf_file: str, load_format: str, common: dict[str, Any]) -> ModelSource:
    if load_format == "safetensors":
        raise ValueError(f"{gguf_file} is a GGUF model; use load_format='gguf' or 'auto'.")
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    folder, name = os.path.split(gguf_file)
    try:
        hf_config = AutoConfig.from_pretrained(folder, gguf_file=name)
    except Exception as e:  # unsupported architecture, corrupt file, ...
        raise ValueError(f"Could not read the GGUF metadata of {gguf_file}: {e}") from e
    if not getattr(hf_config, "architectures", None):
        arch = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(hf_config.model_type)
        if arch is not None:
            hf_config.architectures = [arch]
    return ModelSource(
        path=folder,
        load_format="dummy" if load_format == "dummy" else "gguf",
        hf_config=hf_config,
        checkpoint_dtype=None,
        gguf_file=gguf_file,
        tokenizer=gguf_file,
        generation_config=_read_json(os.path.join(folder, GENERATION_CONFIG_FILE)),
        **common,
    )


def _hub_source(repo_id: str, load_format: str, common: dict[str, Any]) -> ModelSource:
    if load_format == "gguf":
        raise ValueError(
            f"load_format='gguf' needs a local .gguf file; download it from {repo_id!r} and pass its path."
        )
    patterns = [*METADATA_PATTERNS, "*.py"] if common["trust_remote_code"] else METADATA_PATTERNS
    folder = hub_snapshot(repo_id, common["revision"], common["download_dir"], patterns)
    if not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        raise ValueError(
            f"Hub repo {repo_id!r} has no config.json. For a GGUF repo, download the .gguf file and pass its path."
        )
    commit = Path(folder).name
    if load_format != "dummy" and not hub_offline():
        check_safetensors_present(list_hub_files(repo_id, commit), where=f"hub repo {repo_id!r}")
    return _config_folder_source(folder, load_format, common, hub_repo_id=repo_id, hub_commit=commit)


def _resolve_tokenizer(tokenizer: str | None, source: ModelSource, download_dir: str | None) -> str | None:
    revision = source.tokenizer_revision
    if tokenizer is None:
        if source.hub_repo_id is None or revision in (None, source.revision):
            return source.tokenizer
        tokenizer = source.hub_repo_id
    local = os.path.abspath(os.path.expanduser(tokenizer))
    if os.path.isfile(local) and local.endswith(".gguf"):
        return local
    if os.path.isdir(local):
        if not _has_tokenizer(local):
            raise ValueError(
                f"Tokenizer folder {tokenizer!r} holds none of {', '.join(_TOKENIZER_MARKERS)}; "
                "pass a folder saved with tokenizer.save_pretrained, a .gguf file or a hub id."
            )
        return local
    if tokenizer.endswith(".gguf") or _looks_like_path(tokenizer):
        raise ValueError(
            f"Tokenizer {tokenizer!r} does not exist; pass an existing folder, a .gguf file or a hub id."
        )
    folder = hub_snapshot(tokenizer, revision, download_dir, [CONFIG_FILE, *TOKENIZER_PATTERNS])
    if not _has_tokenizer(folder):
        raise ValueError(f"Hub repo {tokenizer!r} has no tokenizer files; pass another --tokenizer.")
    return folder


def _load_config(folder: str, trust_remote_code: bool) -> tuple[Any, dict[str, Any]]:
    """The model config: read as it is for the architectures inferd implements when the file states every value
    they need (``native_config``: no transformers import), else resolved by ``transformers.AutoConfig``."""
    raw = _read_json(os.path.join(folder, CONFIG_FILE))
    native = native_config(raw, trust_remote_code)
    if native is not None:
        return native, raw
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many types for a bad or unknown config
        raise ValueError(f"Could not load {os.path.join(folder, CONFIG_FILE)}: {e}") from e
    return hf_config, raw


def _checkpoint_dtype(raw_config: dict[str, Any]) -> str | None:
    for key in ("dtype", "torch_dtype"):
        value = raw_config.get(key)
        if value is None and isinstance(raw_config.get("text_config"), dict):
            value = raw_config["text_config"].get(key)
        if isinstance(value, str):
            value = value.removeprefix("torch.")
            return value if value in _DTYPES else None
    return None


def _has_tokenizer(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, name)) for name in _TOKENIZER_MARKERS)


def _read_json(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or remove the file.") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object; fix or remove the file.")
    return data


def load_tokenizer(source: ModelSource) -> PreTrainedTokenizerBase | None:
    """Load the tokenizer from local files (never the network); None when the model has none."""
    if source.tokenizer is None:
        return None
    from transformers import AutoTokenizer

    location = source.tokenizer
    try:
        if location.endswith(".gguf"):
            folder, name = os.path.split(location)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            if location == source.gguf_file:
                _align_special_tokens(tokenizer, source.hf_config)
            return tokenizer
        return AutoTokenizer.from_pretrained(location, trust_remote_code=source.trust_remote_code)
    except Exception as e:  # tokenizers and transformers raise many types for broken files
        raise ValueError(
            f"Could not load the tokenizer from {location}: {e}. Pass another --tokenizer."
        ) from e


def _align_special_tokens(tokenizer: PreTrainedTokenizerBase, hf_config: PretrainedConfig) -> None:
    """Make BOS/EOS the GGUF metadata's ids; transformers 5.17 sets SmolLM2's eos to <|im_start|>."""
    for kind in ("bos", "eos"):
        token_id = getattr(hf_config, f"{kind}_token_id", None)
        if not isinstance(token_id, int) or not 0 <= token_id < len(tokenizer):
            continue
        if getattr(tokenizer, f"{kind}_token_id") != token_id:
            setattr(tokenizer, f"{kind}_token", tokenizer.convert_ids_to_tokens(token_id))


def load_generation_defaults(source: ModelSource, generation_config: str = "auto") -> dict[str, Any]:
    """Default sampling parameters from a generation_config.json, named as ``SamplingParams`` fields.

    ``"auto"``: the model's own file; ``"vllm"``: none ({}); otherwise a folder holding generation_config.json.
    Only keys present (and not null) in the file are returned; ``max_new_tokens`` becomes ``max_tokens``.
    """
    if generation_config == "vllm":
        return {}
    if generation_config == "auto":
        raw = source.generation_config
    else:
        folder = os.path.expanduser(generation_config)
        path = folder if folder.endswith(".json") else os.path.join(folder, GENERATION_CONFIG_FILE)
        if not os.path.isfile(path):
            raise ValueError(
                f"generation_config={generation_config!r} must be 'auto', 'vllm' or a folder holding "
                f"{GENERATION_CONFIG_FILE}; {path} does not exist."
            )
        raw = _read_json(path)
    out: dict[str, Any] = {}
    for key, name in _GENERATION_KEYS.items():
        value = raw.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = int(value) if name in ("top_k", "max_tokens") else float(value)
    return out


def eos_token_ids(source: ModelSource, tokenizer: Any) -> tuple[int | None, list[int]]:
    """(primary EOS id, extra EOS ids). Primary: the tokenizer's, else config's (first if a list).

    Extras: generation_config's ``eos_token_id`` (int or list), else config's list, without the primary.
    """
    config_eos = _as_id_list(getattr(source.hf_config, "eos_token_id", None))
    primary = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    if primary is None and config_eos:
        primary = config_eos[0]
    gen_eos = _as_id_list(source.generation_config.get("eos_token_id"))
    extra: list[int] = []
    for token in gen_eos or config_eos:
        if token != primary and token not in extra:
            extra.append(token)
    return primary, extra


def _as_id_list(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []
