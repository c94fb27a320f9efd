"""Loading DA3 weights: the official checkpoint layout, strictly, with a weight hash.

A checkpoint is a directory holding ``config.json`` (``{"model_name": "da3-large", ...}``)
and ``model.safetensors`` whose keys are the network's ``state_dict`` keys
prefixed with ``model.`` (nested models: ``model.da3.*`` and ``model.da3_metric.*``).
It is found either as a local directory or as a Hugging Face hub id such as
``depth-anything/DA3-LARGE`` (downloaded with ``huggingface_hub`` when a network
is reachable).

Loading is strict: every key of the network must come from the file, every key
of the file must belong to the network, and shapes must agree; any violation is
a one-line :class:`CheckpointError` naming the key and the file. The one
exception is a group of *tied* parameters (one module used at several places,
e.g. the shared aux LayerNorm ``head.scratch.output_conv2_aux.{0..3}.2``): a file
may store any one of the copies, or all of them if they are equal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from da3stream.core.network.presets import OFFICIAL_NAMES
from da3stream.errors import CheckpointError

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
KEY_PREFIX = "model."
HUB_IDS = {name: f"depth-anything/{name.upper()}" for name in OFFICIAL_NAMES.values()}
"""Official model_name -> Hugging Face repository, e.g. ``da3-large`` -> ``depth-anything/DA3-LARGE``
(the names come from the one table in :mod:`da3stream.core.network.presets`; ``-1.1`` revisions exist for some)."""
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HASH_CHUNK = 1 << 22


@dataclass(frozen=True)
class CheckpointInfo:
    """Where a network's weights came from."""

    model_id: str
    """Hub id, ``<model_name>:<directory name>`` for a local checkpoint, or ``random:<preset>:seed<N>``."""
    model_name: str
    """Official model name (``da3-large``, ...), or the preset for random weights."""
    preset: str
    """Our network preset key (``large``, ...)."""
    weights_sha256: str
    """sha256 of ``model.safetensors`` (random nets: of the tensor bytes)."""
    weights_random: bool = False
    """True for randomly initialised weights (tests and benchmarks only)."""
    path: Optional[Path] = None
    """Checkpoint directory, or None for random weights."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _download_hint(repo_id: str) -> str:
    return (f"download it on a machine with network (`hf download {repo_id} --local-dir DIR`, "
            f"or `huggingface-cli download {repo_id} --local-dir DIR`), copy DIR here and pass --model DIR")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_id_for(weights: str) -> Optional[str]:
    """The hub repository id that ``weights`` names, or None when it does not look like one.

    Accepts ``owner/name`` and the official model names / our preset names
    (``da3-large``, ``large``), which map to the official repositories.
    """
    name = str(weights)
    if name in HUB_IDS:
        return HUB_IDS[name]
    if f"da3-{name}" in HUB_IDS:
        return HUB_IDS[f"da3-{name}"]
    if _HUB_ID_RE.match(name) and not name.startswith("."):
        return name
    return None


def resolve_checkpoint_dir(weights) -> tuple[Path, str]:
    """Find the checkpoint directory for a local path or a hub id.

    Returns ``(directory, source)`` where ``source`` is ``"local"`` or the hub id.
    A path to ``model.safetensors`` itself is accepted (its directory is used).
    """
    path = Path(os.path.expanduser(str(weights)))
    if path.is_file() and path.name == WEIGHTS_NAME:
        path = path.parent
    if path.is_dir():
        return path, "local"
    if path.exists():
        raise CheckpointError(f"{path}: not a checkpoint directory "
                              f"(expected a directory with {CONFIG_NAME} and {WEIGHTS_NAME})")
    repo_id = hub_id_for(str(weights))
    if repo_id is None:
        raise CheckpointError(f"{weights}: checkpoint directory not found "
                              "(and not a hub id like depth-anything/DA3-LARGE)")
    return _download(repo_id), repo_id


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError(f"{repo_id}: huggingface_hub is not installed; {_download_hint(repo_id)}") from None
    offline = _hub_offline()
    try:
        local = snapshot_download(repo_id, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME], local_files_only=offline)
    except Exception as exc:  # offline, unreachable, unknown repo, gated, ...
        why = "hub is offline (HF_HUB_OFFLINE) and the weights are not cached" if offline else \
            f"hub download failed ({type(exc).__name__}: {_first_line(exc)[:160]})"
        raise CheckpointError(f"{repo_id}: {why}; {_download_hint(repo_id)}") from None
    return Path(local)


def read_model_name(directory: Path) -> str:
    """The official ``model_name`` of the checkpoint in ``directory`` (from config.json)."""
    cfg_path = Path(directory) / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(f"{cfg_path}: missing "
                              f"(a DA3 checkpoint directory holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: not valid JSON ({_first_line(exc)})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object, got {type(cfg).__name__}")
    name = cfg.get("model_name")
    if name is None and isinstance(cfg.get("config"), dict):
        name = cfg["config"].get("model_name")
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"{cfg_path}: no 'model_name' (expected e.g. \"da3-large\")")
    return name


def preset_for_model_name(model_name: str, source: Path) -> str:
    """Our preset key for an official ``model_name``; errors name ``source``."""
    from da3stream.core.network import preset_from_model_name

    try:
        return preset_from_model_name(model_name)
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: unknown model_name {model_name!r} ({_first_line(exc)})") from None
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{source}: unknown model_name {model_name!r} ({_first_line(exc)})") from None


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def state_dict_sha256(state_dict) -> str:
    """sha256 over (sorted key, dtype, shape, bytes) of a state dict; tied tensors count once per key."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def read_safetensors(path: Path) -> dict:
    """All tensors of a safetensors file on CPU; a corrupt or truncated file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a DA3 checkpoint directory holds {CONFIG_NAME} and {WEIGHTS_NAME})")
    try:
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({_first_line(exc)[:160]})") from None


def tied_groups(state_dict) -> list[list[str]]:
    """Groups of state-dict keys that share one tensor (same storage, offset, shape and strides)."""
    groups: dict[tuple, list[str]] = {}
    for key, t in state_dict.items():
        if t.device.type == "meta":
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        groups.setdefault(ident, []).append(key)
    return [sorted(g) for g in groups.values() if len(g) > 1]


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def load_into(net, tensors: dict, source, *, model_name: str = "the network", prefix: str = KEY_PREFIX) -> None:
    """Load ``tensors`` (keys prefixed with ``prefix``) into ``net`` strictly; re-creates tied keys.

    Raises :class:`CheckpointError` naming the first offending key and ``source``.
    """
    import torch

    expected = net.state_dict()
    stripped: dict[str, object] = {}
    unexpected: list[str] = []
    for key, t in tensors.items():
        if key.startswith(prefix) and key[len(prefix):] in expected:
            stripped[key[len(prefix):]] = t
        else:
            unexpected.append(key)
    hint = f" (is the file from another preset than {model_name}?)"
    mismatched = sorted(k for k, t in stripped.items() if tuple(t.shape) != tuple(expected[k].shape))
    if mismatched:
        k = mismatched[0]
        raise CheckpointError(f"{source}: shape mismatch for key '{prefix}{k}': file {tuple(stripped[k].shape)}, "
                              f"{model_name} expects {tuple(expected[k].shape)}{_more(mismatched)}{hint}")
    if unexpected:
        unexpected.sort()
        extra = hint if unexpected[0].startswith(prefix) else f" (keys must start with {prefix!r})"
        raise CheckpointError(f"{source}: unexpected key '{unexpected[0]}'{_more(unexpected)}{extra}")
    for group in tied_groups(expected):
        present = [k for k in group if k in stripped]
        if not present:
            continue
        first = stripped[present[0]]
        for k in present[1:]:
            if not torch.equal(stripped[k], first):
                raise CheckpointError(f"{source}: tied keys '{prefix}{present[0]}' and '{prefix}{k}' "
                                      "hold different values")
        for k in group:
            stripped.setdefault(k, first)
    missing = sorted(k for k in expected if k not in stripped)
    if missing:
        raise CheckpointError(f"{source}: missing key '{prefix}{missing[0]}'{_more(missing)}")
    # the file's tensors are fresh CPU copies: adopt them instead of copying when dtypes agree
    assign = all(stripped[k].dtype == expected[k].dtype for k in expected)
    try:
        net.load_state_dict(stripped, strict=True, assign=assign)
    except RuntimeError as exc:  # pragma: no cover - the checks above should catch everything
        raise CheckpointError(f"{source}: {_first_line(exc)}") from None


@contextlib.contextmanager
def _skip_weight_init():
    """Make torch.nn.init no-ops while building a net whose every weight is loaded next.

    The network has no buffers, and :func:`load_into` loads every parameter strictly,
    so nothing keeps the uninitialised values. Not thread-safe: modules built by other
    threads meanwhile would skip their init too.
    """
    import torch.nn.init as init

    names = ["uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "kaiming_uniform_",
             "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "orthogonal_"]
    saved = {n: getattr(init, n) for n in names if hasattr(init, n)}

    def _noop(tensor, *args, **kwargs):
        return tensor

    try:
        for n in saved:
            setattr(init, n, _noop)
        yield
    finally:
        for n, fn in saved.items():
            setattr(init, n, fn)


def load_checkpoint(weights, *, hash_weights: bool = True):
    """Build the network a checkpoint describes and load its weights (fp32, CPU, eval mode).

    ``weights``: a checkpoint directory (or its ``model.safetensors``), a hub id
    (``depth-anything/DA3-LARGE``) or an official model name (``da3-large``).
    Returns ``(net, CheckpointInfo)``.
    """
    from da3stream.core.network import build_network

    directory, origin = resolve_checkpoint_dir(weights)
    model_name = read_model_name(directory)
    preset = preset_for_model_name(model_name, directory / CONFIG_NAME)
    st_path = directory / WEIGHTS_NAME
    tensors = read_safetensors(st_path)
    with _skip_weight_init():
        net = build_network(preset)
    load_into(net, tensors, st_path, model_name=model_name)
    del tensors
    net.eval()
    digest = file_sha256(st_path) if hash_weights else ""
    model_id = origin if origin != "local" else f"{model_name}:{directory.resolve().name}"
    info = CheckpointInfo(model_id=model_id, model_name=model_name, preset=preset, weights_sha256=digest,
                          weights_random=False, path=directory)
    logger.info("loaded %s (%s, preset %s) from %s", model_id, model_name, preset, directory)
    return net, info


def save_checkpoint(net, directory, model_name: str, *, tied: str = "all", metadata: dict | None = None) -> Path:
    """Write ``net`` in the official layout: ``config.json`` + ``model.safetensors`` (keys prefixed ``model.``).

    ``tied="all"`` stores every copy of tied parameters; ``"first"`` stores only the
    first key (sorted) of each tied group, as some converted files do.
    """
    from safetensors.torch import save_file

    if tied not in ("all", "first"):
        raise CheckpointError(f"save_checkpoint: tied must be 'all' or 'first', got {tied!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = net.state_dict()
    drop = set()
    if tied == "first":
        for group in tied_groups(sd):
            drop.update(group[1:])
    tensors = {KEY_PREFIX + k: v.detach().to("cpu").clone().contiguous() for k, v in sd.items() if k not in drop}
    meta = {"format": "pt", "model_name": model_name}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata=meta)
    (directory / CONFIG_NAME).write_text(json.dumps({"model_name": model_name}, indent=2) + "\n")
    return directory
