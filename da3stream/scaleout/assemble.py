"""Writing the merged store: one store of the standard layout, pixels moved in, never copied.

The merged store is created empty with the store's own :meth:`RunStore.create
<da3stream.io.store.RunStore.create>` (one frame per zarr chunk of the pixel
arrays, like the parts). Then, holding its writer lock:

1. every kept frame's pixel chunks (``frames/depth``, ``frames/conf``,
   ``frames/rgb``: one key per frame and array, ``<array>/c/<row>``) are renamed
   from its part store into the merged row: a metadata operation, no byte of depth is copied;
2. every other table is written whole from row 0 (frames, chunks, overlap, source, map);
3. the commit record is written last, as the store's own commit protocol does.

Each step can be repeated: a rename whose source is gone and whose target
exists was done by an earlier, killed merge; tables are rewritten with the same
values; until step 3 the store reads as empty. docs/SCALEOUT.md explains why a
kill at any point leaves a rerunnable merge.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import zarr

from da3stream.errors import StoreError
from da3stream.io.store import RunStore
from da3stream.io.store import zarr_util as zu
from da3stream.io.store.layout import COUNTERS, read_root_attrs, to_f16
from da3stream.scaleout.parts import PartTables
from da3stream.scaleout.segment import PART_FRAMES_PER_CHUNK
from da3stream.scaleout.tables import Merged

log = logging.getLogger(__name__)

__all__ = ["PIXEL_ARRAYS", "assemble", "create_merged"]

PIXEL_ARRAYS = ("frames/depth", "frames/conf", "frames/rgb")


def create_merged(out: Path, part: PartTables, config: dict, extra: dict) -> None:
    """Create the empty merged store with the parts' layout (attributes from ``part``, the first part)."""
    a = part.attrs
    comp = a["compression"]
    if int(comp["frames_per_chunk"]) != PART_FRAMES_PER_CHUNK:
        raise StoreError(f"{part.path}: not a part store (frames_per_chunk {comp['frames_per_chunk']})")
    source = dict(a["source"])
    source.pop("segment", None)
    source["start_index"] = 0
    store = RunStore.create(
        out, config=config, model=a["model"], source=source, image_hw=tuple(a["image_hw"]),
        depth_hw=tuple(a["depth_hw"]), descriptor_dim=a["descriptor_dim"], save_rgb=a["save_rgb"],
        save_conf=a["save_conf"], compression_level=int(comp["level"]), frames_per_chunk=PART_FRAMES_PER_CHUNK,
        pixel_cname=comp["pixel_cname"], rgb_cname=comp["rgb_cname"], overwrite=True,
        attrs={"orig_from_grid": a["orig_from_grid"], "planned_process_res": a["planned_process_res"], **extra},
    )
    store.close()


def assemble(out: Path, parts: list[PartTables], merged: Merged, after_move=None) -> None:
    """Steps 1-3 of the module docstring (``after_move(k)``: called after the k-th rename, for tests)."""
    out = Path(out)
    lock = zu.WriterLock(out)
    if not lock.acquire():
        raise StoreError(f"{out}: another process is writing this store")
    try:
        zstore = zarr.storage.LocalStore(out)
        pixel = [p for p in PIXEL_ARRAYS if (out / p).is_dir()]
        for k, (part, row, merged_row) in enumerate(merged.moves):
            for path in pixel:
                _move(parts[part].path / path / "c" / str(row), out / path / "c" / str(merged_row))
            if after_move is not None:
                after_move(k)
        n = _write_tables(zstore, merged, pixel)
        commit = dict(read_root_attrs(out)["commit"])
        commit.update({k: 0 for k in COUNTERS})
        commit.update(n, id=int(commit["id"]) + 1, time=time.time(), pose_slot=0, state=None)
        zarr.open_group(zstore, mode="r+", zarr_format=3).update_attributes({"commit": commit})
    except OSError as exc:
        raise StoreError(f"{out}: writing the merged store failed ({zu.os_reason(exc)})") from None
    finally:
        lock.release()


def _move(src: Path, dst: Path) -> None:
    """Rename one frame's chunk directory; done already when only the target exists."""
    if src.exists():
        if dst.exists():
            raise StoreError(f"{dst}: exists, and so does {src}; the merged store is not this merge's")
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)
    elif not dst.exists():
        raise StoreError(f"{src}: frame pixels missing from the part store and from the merged store")


def _write_tables(zstore, m: Merged, pixel: list) -> dict:
    """Every table from row 0 (pixel arrays only resized); the committed row counts."""
    F = int(m.frames["index"].shape[0])
    cols = {f"frames/{k}": v for k, v in m.frames.items() if k != "descriptor"}
    if "descriptor" in m.frames and (Path(zstore.root) / "frames/descriptor").is_dir():
        cols["frames/descriptor"] = m.frames["descriptor"].astype(np.float32)
    cols["frames/world_from_cam_0"] = m.state.world_poses()
    cols.update({f"chunks/{k}": v for k, v in m.chunks.items()})
    cols["chunks/world_from_chunk_0"] = m.state.chunk_table()
    cols.update({f"overlap/{k}": v for k, v in m.overlap.items()})
    cols.update({f"source/{k}": v for k, v in m.source.items()})
    cols.update({f"map/{k}": v for k, v in m.map.items()})
    cols["map/conf"] = to_f16(np.asarray(cols["map/conf"], np.float32))
    arrays = {path: zu.open_array(zstore, path, "r+") for path in list(cols) + pixel}
    sizes = [(arrays[p], len(v)) for p, v in cols.items()] + [(arrays[p], F) for p in pixel]
    zu.resize_rows(sizes)
    zu.write_rows([(arrays[p], 0, np.asarray(v)) for p, v in cols.items()])
    return {"n_frames": F, "n_chunks": int(len(m.chunks["frame_start"])), "n_read": int(len(m.source["index"])),
            "n_points": int(len(m.map["xyz"])), "n_overlap": int(len(m.overlap["row"]))}
