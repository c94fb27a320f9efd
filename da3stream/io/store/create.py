"""Creating an empty run store: argument checks, the root attributes, the directory and the empty arrays.

:meth:`RunStore.create <da3stream.io.store.run_store.RunStore.create>` calls
these in order; the root attributes (with the first, empty commit record) are
written last, so a store whose creation was interrupted is recognisably invalid.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Optional

import zarr

from da3stream.errors import StoreError
from da3stream.io.store import zarr_util as zu
from da3stream.io.store.layout import COUNTERS, FORMAT_NAME, FORMAT_VERSION, ArraySpec, create_array
from da3stream.io.store.records import ChunkStatus, SkipReason

__all__ = ["BLOSC_CNAMES", "check_create_args", "config_dict", "empty_commit", "prepare_directory", "root_attributes", "write_empty_store"]

BLOSC_CNAMES = ("zstd", "lz4", "lz4hc", "blosclz", "zlib")


def config_dict(config: Any) -> dict:
    """The config as a plain nested dict (a config dataclass is converted; a mapping is returned as is)."""
    if dataclasses.is_dataclass(config):
        from da3stream.config import to_dict

        return to_dict(config)
    return config


def check_create_args(descriptor_dim: Optional[int], compression_level: int, frames_per_chunk: int,
                      pixel_cname: str, rgb_cname: str) -> None:
    """Raise :class:`StoreError` for the first :meth:`RunStore.create` option out of range."""
    if descriptor_dim is not None and int(descriptor_dim) < 1:
        raise StoreError(f"RunStore.create: descriptor_dim must be None or >= 1, got {descriptor_dim}")
    if not 0 <= int(compression_level) <= 9:
        raise StoreError(f"RunStore.create: compression_level must be 0..9, got {compression_level}")
    if int(frames_per_chunk) < 1:
        raise StoreError(f"RunStore.create: frames_per_chunk must be >= 1, got {frames_per_chunk}")
    for what, cname in (("pixel_cname", pixel_cname), ("rgb_cname", rgb_cname)):
        if cname not in BLOSC_CNAMES:
            raise StoreError(f"RunStore.create: {what} must be one of {', '.join(BLOSC_CNAMES)}, got {cname!r}")


def root_attributes(
    layout: list[ArraySpec], *, config: Mapping[str, Any], model: Mapping[str, Any], source: Mapping[str, Any],
    image_hw: tuple, depth_hw: tuple, descriptor_dim: Optional[int], save_rgb: bool, save_conf: bool,
    compression: dict, attrs: Optional[Mapping[str, Any]],
) -> dict:
    """The root attributes of a new store, without its ``commit`` record (see docs/STORE.md)."""
    model_d = {"id": None, "weights_sha256": None, "weights_random": False}
    model_d.update(zu.jsonable(dict(model)))
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": zu.utc_now(),
        "status": "running",
        "status_time": zu.utc_now(),
        "config": zu.jsonable(dict(config)),
        "model": model_d,
        "source": zu.jsonable(dict(source)),
        "image_hw": list(image_hw),
        "depth_hw": list(depth_hw),
        "descriptor_dim": int(descriptor_dim) if descriptor_dim else None,
        "save_rgb": bool(save_rgb),
        "save_conf": bool(save_conf),
        "compression": compression,
        "codes": {"chunk_status": {c.name.lower(): int(c) for c in ChunkStatus},
                  "skipped_reason": {c.name.lower(): int(c) for c in SkipReason}},
        "arrays": {s.path: {"counter": s.counter, "slot": s.slot} for s in layout},
        "run": {},
        "extra": zu.jsonable(dict(attrs or {})),
    }


def empty_commit() -> dict:
    """The commit record of a new store: every counter 0, pose slot 0, no resume state."""
    commit = {k: 0 for k in COUNTERS}
    commit.update(id=0, time=time.time(), pose_slot=0, pose_epoch=0, state=None)
    return commit


def prepare_directory(p: Path, overwrite: bool) -> None:
    """Make ``p`` an empty directory; an existing non-empty one only with ``overwrite``, and only a store."""
    if p.exists() and not p.is_dir():
        raise StoreError(f"{p}: exists and is not a directory")
    if p.exists() and any(p.iterdir()):
        if not overwrite:
            raise StoreError(f"{p}: already exists and is not empty (pass overwrite=True to replace it)")
        if not (p / "zarr.json").is_file():
            raise StoreError(f"{p}: refusing to overwrite a non-empty directory that is not a Zarr store")
        probe = zu.WriterLock(p)
        if not probe.acquire():
            raise StoreError(f"{p}: cannot overwrite, another process is writing this store")
        probe.release()
        shutil.rmtree(p)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{p}: cannot create the store directory ({zu.os_reason(exc)})") from None


def write_empty_store(p: Path, layout: list[ArraySpec], root_attrs: dict, lock: zu.WriterLock) -> None:
    """Create the groups and the empty arrays of ``layout`` in ``p``, then the root attributes (last).

    ``root_attrs`` must hold the ``commit`` record and the ``compression``
    record; on an OS error ``lock`` is released and :class:`StoreError` raised.
    """
    comp = root_attrs["compression"]
    try:
        zstore = zarr.storage.LocalStore(p)
        root = zarr.create_group(zstore, zarr_format=3, attributes={"format": FORMAT_NAME})
        for grp in sorted({s.path.split("/")[0] for s in layout} | {"state"}):
            root.create_group(grp)
        root["state"].create_group("0")
        root["state"].create_group("1")
        lvl = int(comp["level"])
        for s in layout:
            names = [f"{s.path}_0", f"{s.path}_1"] if s.slot else [s.path]
            for name in names:
                create_array(zstore, name, s, lvl, comp["pixel_cname"], comp["rgb_cname"])
        root.update_attributes(root_attrs)  # written last: the store is valid from here on
    except OSError as exc:
        lock.release()
        raise StoreError(f"{p}: cannot create the store ({zu.os_reason(exc)})") from None
