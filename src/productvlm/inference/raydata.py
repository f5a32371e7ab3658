"""The batch engine past one machine: planned batches run as a Ray Data pipeline over a pool
of model actors, each writing its own part file.

The driver plans the batches exactly as one process would (:func:`~.batch.plan`: by position,
the rows already in the part files left out) and hands each batch to Ray Data as one item
(the audit streams its catalog into payload files that Ray Data reads block by block,
:func:`write_payloads`);
``map_batches`` streams them through a pool of actors (one per GPU, or per CPU slot), each
of which loads the model once and, per batch, does the whole work (fetch the photos, answer,
judge) and appends the batch's rows to its own part file (``rank-ray-<id>.jsonl``), or
returns them as text (predict), in order. So a run on Ray gives the same batches, hence the
same rows, as one process; an actor that dies is restarted by Ray and its unfinished batch is
retried (a batch written twice counts once, :class:`~.batch.Parts`); and a rerun resumes
from the part files. The driver keeps only the plan: photos never pass through it.

Ray is optional (``pip install 'productvlm[ray]'``).

>>> for text in run_on_ray(payloads, PredictActor, {"cfg": cfg_json}, actors=2):  # doctest: +SKIP
...     print(text)
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from productvlm.errors import ProductVLMError
from productvlm.inference.batch import chunks

#: ``--ray local`` starts a Ray instance on this machine; anything else is a cluster address
#: for ``ray.init`` (``auto``: the cluster this machine is part of, ``ray://host:10001``).
LOCAL = "local"


def import_ray() -> Any:
    """``ray`` with Ray Data, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ProductVLMError("--ray needs Ray Data: pip install 'productvlm[ray]'") from None
    return ray


def part_name() -> str:
    """A part-file name of this actor's own (``rank-ray-<id>``: read with the ranks' files)."""
    return f"-ray-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class PayloadFiles:
    """Planned batches written to JSON-lines files (one payload a line) that Ray Data reads
    block by block, so a plan of millions of rows never sits in the driver's memory or in
    the object store at once. ``count``: the payloads written."""

    folder: Path
    count: int


def write_payloads(folder: Path, payloads: Iterable[str], per_file: int = 64) -> PayloadFiles:
    """Write ``payloads`` (one JSON text each, no newline inside) to ``folder`` (emptied
    first), ``per_file`` a file, pulling them as they come.

    >>> write_payloads(Path("runs/audit/ray-plan"), ['[1, 2]', '[3]']).count  # doctest: +SKIP
    2
    """
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    count = 0
    for n, block in enumerate(chunks(payloads, per_file)):
        (folder / f"block-{n:06d}.jsonl").write_text("".join(p + "\n" for p in block),
                                                      encoding="utf-8")
        count += len(block)
    return PayloadFiles(folder, count)


def run_on_ray(payloads: Sequence[str] | PayloadFiles, actor: type,
               actor_kwargs: dict[str, Any], *, address: str = LOCAL, actors: int | None = None,
               gpus_per_actor: float | None = None, cpus_per_actor: float = 1.0,
               ) -> Iterator[str]:
    """Stream ``payloads`` (one planned batch each, as JSON text; or :class:`PayloadFiles`,
    read from disk block by block) through a pool of ``actors`` instances of
    ``actor(**actor_kwargs)``; each is called with a Ray Data batch ``{"text": [payload]}``
    and returns ``{"out": [text]}``. Yields the texts in the order of the payloads, as they
    come (the driver holds one batch's output at a time).

    ``actors``: the pool's size (default: one actor per GPU of the cluster, else one per
    ``cpus_per_actor`` CPUs). ``gpus_per_actor``: default 1 where the cluster has GPUs.
    """
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        if address == LOCAL:
            ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        else:
            try:
                ray.init(address=address, log_to_driver=False, logging_level="WARNING")
            except (ConnectionError, ValueError) as err:
                raise ProductVLMError(f"--ray {address}: cannot reach the Ray cluster "
                                      f"({err})") from None
    try:
        count = payloads.count if isinstance(payloads, PayloadFiles) else len(payloads)
        if not count:
            return
        res = ray.cluster_resources()
        if gpus_per_actor is None:
            gpus_per_actor = 1.0 if res.get("GPU", 0) >= 1 else 0.0
        if actors is None:
            actors = (int(res.get("GPU", 0) // gpus_per_actor) if gpus_per_actor
                      else int(res.get("CPU", 1) // cpus_per_actor))
        actors = max(1, min(actors, count))
        options = ray.data.DataContext.get_current().execution_options
        was_ordered, options.preserve_order = options.preserve_order, True
        if isinstance(payloads, PayloadFiles):  # file by file, in the files' order
            # the read tasks take no CPU of their own: the actors may hold every one, and
            # a read waiting for a CPU would then never feed them (a deadlock, seen on 2
            # cores); one at a time, as reading a file is quick (each more would be one more
            # worker process: 6.8 GB for the tree at 100,000 rows, against 2.9 with one)
            ds = ray.data.read_text(sorted(str(f) for f in payloads.folder.glob("*.jsonl")),
                                    num_cpus=0, concurrency=1)
        else:
            ds = ray.data.from_items([{"text": p} for p in payloads],
                                     override_num_blocks=len(payloads))
        # an actor pool restarts a dead actor and retries its batch (Ray Data's defaults:
        # max_restarts=-1, max_task_retries=-1)
        out = ds.map_batches(actor, batch_size=1,
                             compute=ray.data.ActorPoolStrategy(size=actors),
                             fn_constructor_kwargs=actor_kwargs, num_cpus=cpus_per_actor,
                             num_gpus=gpus_per_actor or None)
        try:
            for row in out.iter_rows():
                yield str(row["out"])
        finally:
            options.preserve_order = was_ordered
    finally:
        if started:
            ray.shutdown()


__all__ = ["LOCAL", "PayloadFiles", "import_ray", "part_name", "run_on_ray", "write_payloads"]
