"""Resumable model-zoo generation: sample configs, train them in vmapped groups, write atomic shards.

Layout of ``out_dir``::

    zoo.json            what was asked for (family, n, seed, data, epochs, ...); a restart must match it
    shard_00000.pt      a list of records, one per network, written atomically (temp file + os.replace)
    manifest.json       summary of the finished shards (rebuilt from the shards: they are the truth)

The networks are split into a fixed, deterministic list of chunks (grouped by architecture and optimizer,
at most ``group_size`` per chunk, ordered by index). Chunk ``k`` becomes ``shard_k``. A restart skips the
chunks whose shard exists, so a run killed at any moment (even SIGKILL) loses at most the chunk in progress
and never duplicates one; training is deterministic per chunk, so the result equals an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from symgraph.cli_util import atomic_torch_save, atomic_write

from .data import load_data
from .families import NetConfig, sample_config
from .train_many import HParams, train_group

__all__ = ["plan_chunks", "generate_zoo", "load_zoo"]


def plan_chunks(configs: list[NetConfig], group_size: int) -> list[list[NetConfig]]:
    """Deterministic chunks: same group key (parameter shapes), at most ``group_size`` networks, ordered by
    first index."""
    groups: dict[tuple, list[NetConfig]] = defaultdict(list)
    for c in configs:
        groups[c.group_key()].append(c)
    chunks = []
    for members in groups.values():
        members.sort(key=lambda c: c.index)
        chunks += [members[i : i + group_size] for i in range(0, len(members), group_size)]
    chunks.sort(key=lambda ch: ch[0].index)
    return chunks


def _build(cfg: NetConfig):
    from symgraph.models import build_model

    from . import unterthiner  # noqa: F401  (registers the 'smallcnn' architecture)

    return build_model(cfg.arch, **dict(cfg.kwargs))


def generate_zoo(
    out_dir: str | Path,
    family: str = "diverse",
    n: int = 100,
    seed: int = 0,
    data: str = "digits",
    epochs: int = 10,
    batch_size: int = 128,
    group_size: int = 32,
    device: str = "cpu",
    vectorize: bool = True,
    engine: str = "vmap",
    progress: bool = True,
    max_chunks: int | None = None,
    train_subset: int | None = None,
    part: tuple[int, int] = (0, 1),
) -> Path:
    """Generate (or resume) a zoo in ``out_dir``; returns the directory. See the module docstring.

    ``part=(r, W)`` trains only the chunks ``k`` with ``k % W == r``: ``W`` processes (torchrun ranks, or
    machines sharing a directory) with ``r = 0 .. W-1`` build one zoo together, each shard written by exactly
    one of them; the result equals ``part=(0, 1)``. ``engine``: see :func:`gmn.zoo.train_group` (``"grouped"``
    trains the CNN families with grouped convolutions, 1.3x vmap on cnn2d; other dropout masks than vmap).
    """
    rank, world = part
    if not (world >= 1 and 0 <= rank < world):
        raise ValueError(f"Expected part=(rank, world) with 0 <= rank < world (got {part!r})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    request = {
        "family": family,
        "n": n,
        "seed": seed,
        "data": data,
        "epochs": epochs,
        "batch_size": batch_size,
        "group_size": group_size,
        "train_subset": train_subset,
        "format": 1,
    }
    req_path = out / "zoo.json"
    if req_path.exists():
        old = json.loads(req_path.read_text())
        if old != request:
            diff = {k: (old.get(k), v) for k, v in request.items() if old.get(k) != v}
            raise ValueError(
                f"Expected the settings this zoo was started with in {out} (got changes {diff}); "
                "use another --out or the same settings"
            )
    else:
        atomic_write(req_path, json.dumps(request, indent=1))
    ds = load_data(data, seed=seed)
    if train_subset is not None:  # a quick zoo (tests, smoke runs): the first train_subset training images
        ds = dataclasses.replace(ds, x_train=ds.x_train[:train_subset], y_train=ds.y_train[:train_subset])
    configs = [sample_config(family, i, seed, ds.image_shape, ds.num_classes) for i in range(n)]
    chunks = plan_chunks(configs, group_size)
    mine = [k for k in range(len(chunks)) if k % world == rank]
    todo = [k for k in mine if not (out / f"shard_{k:05d}.pt").exists()]
    total = sum(len(chunks[k]) for k in mine)
    desc = f"zoo {family}" if world == 1 else f"zoo {family} part {rank}/{world}"
    bar = tqdm(
        total=total, initial=total - sum(len(chunks[k]) for k in todo), unit="net", disable=not progress, desc=desc
    )
    done_now = 0
    for k in todo:
        if max_chunks is not None and done_now >= max_chunks:
            break
        chunk = chunks[k]
        t0 = time.perf_counter()
        hps = [HParams(c.lr, c.weight_decay, c.label_smoothing, c.optimizer, c.seed) for c in chunk]
        results = train_group(
            [lambda c=c: _build(c) for c in chunk],
            hps,
            ds,
            epochs=epochs,
            batch_size=batch_size,
            device=device,
            vectorize=vectorize,
            data_seed=seed * 1_000_003 + k,
            engine=engine,
        )
        records = [
            dict(
                c.to_dict(),
                state_dict=r.state_dict,
                train_acc=r.train_acc,
                test_acc=r.test_acc,
                final_loss=r.final_loss,
                data=data,
            )
            for c, r in zip(chunk, results)
        ]
        atomic_torch_save(
            {"chunk": k, "seconds": time.perf_counter() - t0, "records": records}, out / f"shard_{k:05d}.pt"
        )
        _write_manifest(out, chunks)
        bar.update(len(chunk))
        done_now += 1
    bar.close()
    _write_manifest(out, chunks)
    return out


def _write_manifest(out: Path, chunks) -> None:
    shards = sorted(p.name for p in out.glob("shard_*.pt"))
    done = {int(s[6:11]) for s in shards}
    manifest = {
        "num_chunks": len(chunks),
        "shards": shards,
        "complete": len(done) == len(chunks),
        "networks_done": sum(len(chunks[k]) for k in done if k < len(chunks)),
        "networks_total": sum(len(c) for c in chunks),
    }
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=1))


def load_zoo(out_dir: str | Path) -> list[dict]:
    """All records of a zoo, sorted by network index (``torch.load(weights_only=True)``)."""
    out = Path(out_dir)
    records = []
    for p in sorted(out.glob("shard_*.pt")):
        records += torch.load(p, weights_only=True)["records"]
    records.sort(key=lambda r: r["index"])
    return records
