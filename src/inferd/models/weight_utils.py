"""Checkpoint files: fetching them from the Hugging Face hub (through huggingface_hub, which honours HF_TOKEN,
HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE), which safetensors files make a checkpoint, streaming HF-named CPU tensors
(safetensors or GGUF), and random dummy weights."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from inferd.models.source import ModelSource

DUMMY_WEIGHT_RANGE = 1e-3
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
UNSUPPORTED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".pdparams")


def hub_offline() -> bool:
    """Whether huggingface_hub is in offline mode (HF_HUB_OFFLINE=1 when it was imported)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_snapshot(repo_id: str, revision: str | None, cache_dir: str | None, allow_patterns: list[str]) -> str:
    """Download the files of ``repo_id`` matching ``allow_patterns`` into the hub cache; return the snapshot folder.

    In offline mode only the cache is looked at. Hub failures become ``ValueError`` saying what to do.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    rev = f" at revision {revision!r}" if revision else ""
    try:
        return snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=allow_patterns,
            local_files_only=offline,
        )
    except HFValidationError as e:
        raise ValueError(f"{repo_id!r} is not a local path nor a valid hub id (org/name): {e}") from e
    except GatedRepoError as e:
        raise ValueError(
            f"Hub repo {repo_id!r} is gated: accept its terms on its hub page and set HF_TOKEN to a token that has "
            "access."
        ) from e
    except RevisionNotFoundError as e:
        raise ValueError(
            f"Hub repo {repo_id!r} has no revision {revision!r}; pass an existing branch, tag or commit."
        ) from e
    except RepositoryNotFoundError as e:
        raise ValueError(
            f"{repo_id!r} is not a local path and no hub repo of that name is visible: check the name, or set HF_TOKEN "
            "if it is private."
        ) from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise ValueError(
                f"The hub refused access to {repo_id!r} (HTTP {status}); set HF_TOKEN to a token with access."
            ) from e
        raise ValueError(f"Could not download {repo_id!r}{rev} from the hub: {e}") from e
    except LocalEntryNotFoundError as e:
        if offline:
            raise ValueError(
                f"HF_HUB_OFFLINE=1 and {repo_id!r}{rev} is not in the hub cache"
                f"{f' at {cache_dir}' if cache_dir else ''}; download it once online, unset HF_HUB_OFFLINE, "
                "or pass a local folder."
            ) from e
        raise ValueError(
            f"Could not reach the hub to fetch {repo_id!r}{rev}, and it is not in the cache; check the network or "
            f"HF_ENDPOINT. ({e})"
        ) from e


def list_hub_files(repo_id: str, commit: str) -> list[str]:
    """All file paths of a hub repo at ``commit`` (online only)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return HfApi().list_repo_files(repo_id, revision=commit)
    except HfHubHTTPError as e:
        raise ValueError(f"Could not list the files of hub repo {repo_id!r}: {e}") from e


def check_safetensors_present(files: list[str], *, where: str) -> None:
    """Raise ``ValueError`` unless ``files`` (names relative to a checkpoint root) include top-level safetensors."""
    top = [f for f in files if "/" not in f]
    if any(f.endswith(".safetensors") for f in top):
        return
    others = sorted(f for f in top if f.endswith(UNSUPPORTED_WEIGHT_SUFFIXES))
    if others:
        raise ValueError(
            f"{where} only has weights in an unsupported format ({', '.join(others[:3])}); inferd loads only "
            "*.safetensors and GGUF. Convert the checkpoint (model.save_pretrained saves safetensors), or use "
            "load_format='dummy' for random weights."
        )
    raise ValueError(
        f"{where} has no *.safetensors weights; pass a checkpoint with safetensors, a .gguf file, or use "
        "load_format='dummy' for random weights."
    )


def safetensors_files(folder: str) -> list[str]:
    """Absolute paths of a checkpoint's safetensors files, sorted.

    With ``model.safetensors.index.json`` (or exactly one other top-level ``*.safetensors.index.json``) these are
    the shards its ``weight_map`` names, which must all exist; otherwise every top-level ``*.safetensors``.
    Returns [] when there are none.
    """
    index = _index_file(folder)
    if index is not None:
        names = _shards_in_index(index)
        missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
        if missing:
            raise ValueError(
                f"{index} names shards that are missing from {folder}: {', '.join(missing[:3])}; "
                "re-download the checkpoint."
            )
    else:
        names = _pick_top_level([p.name for p in Path(folder).glob("*.safetensors")])
    return [os.path.join(folder, n) for n in names]


def _index_file(folder: str) -> str | None:
    default = os.path.join(folder, SAFETENSORS_INDEX_FILE)
    if os.path.isfile(default):
        return default
    others = sorted(Path(folder).glob("*.safetensors.index.json"))
    return str(others[0]) if len(others) == 1 else None


def _shards_in_index(index: str) -> list[str]:
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{index} is not a valid safetensors index ({e}); re-download the checkpoint."
        ) from e


def _pick_top_level(names: list[str]) -> list[str]:
    """Top-level safetensors of one checkpoint; a Mistral-style ``consolidated*`` copy is skipped beside others."""
    names = sorted(n for n in names if "/" not in n and n.endswith(".safetensors"))
    regular = [n for n in names if not n.startswith("consolidated")]
    return regular or names


def download_weights(source: ModelSource) -> list[str]:
    """Local paths of the safetensors files of ``source``, downloading hub shards (with huggingface_hub's progress
    bar) when needed. Offline, only the hub cache is used. Raises ``ValueError`` when weights are missing."""
    if source.load_format != "safetensors":
        raise ValueError(
            f"download_weights needs a safetensors model; {source.model!r} is {source.load_format}."
        )
    if source.hub_repo_id is not None and not hub_offline():
        index = _index_file(source.path)
        if index is not None:
            names = _shards_in_index(index)
        else:
            repo_files = list_hub_files(source.hub_repo_id, source.hub_commit or "main")
            check_safetensors_present(repo_files, where=f"hub repo {source.hub_repo_id!r}")
            names = _pick_top_level(repo_files)
        folder = hub_snapshot(source.hub_repo_id, source.hub_commit, source.download_dir, names)
        if os.path.realpath(folder) != os.path.realpath(source.path):
            raise ValueError(
                f"Hub snapshot {folder} differs from the resolved {source.path}; resolve the model again."
            )
    files = safetensors_files(source.path)
    if not files:
        if source.hub_repo_id is not None:
            raise ValueError(
                f"HF_HUB_OFFLINE=1 and the weights of {source.hub_repo_id!r} are not in the hub cache "
                f"({source.path}); download them once online or unset HF_HUB_OFFLINE."
            )
        check_safetensors_present(os.listdir(source.path), where=source.path)
    return files


def iter_weights(source: ModelSource) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(HF parameter name, CPU tensor)`` for every tensor of the checkpoint, one file at a time.

    Safetensors tensors keep their stored dtype; GGUF tensors are dequantized to float (q/k permutation undone).
    Raises ``ValueError`` for ``load_format='dummy'`` (use ``initialize_dummy_weights``) or missing weights.
    """
    if source.load_format == "gguf":
        from inferd.models.gguf_loader import iter_gguf_weights

        assert source.gguf_file is not None
        yield from iter_gguf_weights(source.gguf_file, source.hf_config)
        return
    if source.load_format != "safetensors":
        raise ValueError(
            f"load_format={source.load_format!r} has no weights to read; call initialize_dummy_weights instead."
        )
    from safetensors import safe_open
    from tqdm.auto import tqdm

    files = download_weights(source)
    for path in tqdm(files, desc="Loading safetensors shards", disable=len(files) < 2):
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def initialize_dummy_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """Fill every floating-point parameter of ``model`` in place with uniform(-1e-3, 1e-3) values.

    Deterministic for a given ``seed`` and device; buffers (e.g. rotary tables) are left untouched.
    """
    generators: dict[torch.device, torch.Generator] = {}
    low, high = -DUMMY_WEIGHT_RANGE, DUMMY_WEIGHT_RANGE
    with torch.no_grad():
        for param in model.parameters():
            if not torch.is_floating_point(param) or param.device.type == "meta":
                continue
            gen = generators.get(param.device)
            if gen is None:
                gen = torch.Generator(device=param.device)
                gen.manual_seed(seed)
                generators[param.device] = gen
            if param.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
                param.uniform_(low, high, generator=gen)
            else:  # e.g. float8: draw in float16, then cast
                tmp = torch.empty(param.shape, dtype=torch.float16, device=param.device)
                param.copy_(tmp.uniform_(low, high, generator=gen))
