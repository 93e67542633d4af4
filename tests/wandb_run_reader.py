"""Read an offline W&B run's ``run-*.wandb`` file (tests only).

Offline runs of wandb-core keep their summary and history only in that file (a LevelDB-style
log of ``wandb_internal_pb2.Record`` protobufs), not in ``files/wandb-summary.json``.
"""

import glob
import json
import os
import struct

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK, _HEADER = 32768, 7


def _chunks(data: bytes):
    pos, buf = 7, b""  # file header: ":W&B", 2-byte magic, 1-byte version
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 1:  # full
            yield chunk
        elif kind == 2:  # first
            buf = chunk
        elif kind == 3:  # middle
            buf += chunk
        elif kind == 4:  # last
            yield buf + chunk
            buf = b""
        else:
            break


def read_run(run_dir: str) -> dict:
    """``{"summary": {...}, "history": [{...}, ...], "config": {...}}`` of an offline run dir.

    ``summary`` follows W&B's meaning: the last logged value of every history key, updated by
    the explicit summary records (which wandb-core writes asynchronously, so under load the
    last of them can trail the history records)."""
    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    summary, history, config = {}, [], {}
    with open(path, "rb") as f:
        data = f.read()
    for chunk in _chunks(data):
        rec = pb.Record()
        rec.ParseFromString(chunk)
        kind = rec.WhichOneof("record_type")
        if kind == "summary":
            for item in rec.summary.update:
                key = item.key or "/".join(item.nested_key)
                summary[key] = json.loads(item.value_json)
        elif kind == "history":
            history.append(
                {
                    i.key or "/".join(i.nested_key): json.loads(i.value_json)
                    for i in rec.history.item
                }
            )
        elif kind == "config":
            for item in rec.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    merged = {k: v for row in history for k, v in row.items()}
    merged.update(summary)
    return {"summary": merged, "history": history, "config": config}


def offline_runs(root: str) -> list[str]:
    """Offline run folders under ``root`` (searched recursively)."""
    return sorted(glob.glob(os.path.join(root, "**", "offline-run-*"), recursive=True))
