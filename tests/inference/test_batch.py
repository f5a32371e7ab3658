"""The batch engine (inference/batch.py) and dist.py: rows -> (row, Prediction) in order and
in full batches, unreadable rows answered without the model, batches planned by position for
shards and resume, part files that survive a torn line, rank and world from the launcher.

The engine runs a real tiny random Phi-3-vision (calibrated: the run of tests/conftest.py);
answers must equal the Predictor's own, row for row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from productvlm import dist
from productvlm.inference import Prediction, Predictor
from productvlm.inference.batch import (
    Parts,
    Row,
    answer_batches,
    answer_rows,
    packed,
    plan,
    plan_stream,
)


@pytest.fixture(scope="module")
def predictor(calibrated_run: dict[str, Path]) -> Predictor:
    return Predictor.load(calibrated_run["run"], batch_size=3, max_new_tokens=48)


def photos(n: int) -> list[Image.Image]:
    return [Image.new("RGB", (60 + 17 * i, 90 - 5 * i), (30 * i % 255, 120, 200 - 9 * i))
            for i in range(n)]


def test_answers_equal_the_predictor_s_row_for_row(predictor: Predictor) -> None:
    images = photos(7)
    direct = predictor.predict(images)
    rows = [Row(i, im) for i, im in enumerate(images)]
    rows.insert(2, Row("broken", "image: not a JPEG, PNG or WebP file"))
    rows.append(Row("missing", "image: HTTP 404"))
    seen: list[int] = []
    got = list(answer_rows(iter(rows), predictor, progress=seen.append))
    assert [r.key for r, _ in got] == [r.key for r in rows]  # order kept, nothing dropped
    answers = [p for r, p in got if r.readable]
    assert [p.raw for p in answers] == [p.raw for p in direct]
    assert [p.price_low for p in answers] == [p.price_low for p in direct]
    assert all(p.signals is not None for p in answers)
    bad = dict((r.key, p) for r, p in got if not r.readable)
    assert bad["broken"] == Prediction(error="image: not a JPEG, PNG or WebP file")
    assert not bad["missing"].ok and bad["missing"].raw is None
    assert seen == [len(rows)]  # one window: the 7 photos regrouped by shape, 2 bad rows
    seen.clear()
    kept = list(answer_rows(iter(rows), predictor, progress=seen.append, window=1))
    assert [p.raw for _, p in kept] == [p.raw for _, p in got]
    assert sum(seen) == len(rows) and len(seen) == 3  # 7 photos in batches of 3 (+ 2 bad)


def test_unreadable_rows_never_reach_the_model_and_batches_stay_full(monkeypatch) -> None:
    class Recording:
        batch_size = 2

        def __init__(self) -> None:
            self.calls: list[list[Any]] = []

        def predict(self, images: list[Any], **kwargs: Any) -> list[Prediction]:
            self.calls.append(list(images))
            return [Prediction(title=f"t{im}") for im in images]

    rec = Recording()
    rows = [Row(0, 10), Row(1, "bad"), Row(2, 20), Row(3, 30), Row(4, "bad"), Row(5, 50)]
    got = list(answer_rows(rows, rec, window=1))
    assert rec.calls == [[10, 20], [30, 50]]
    assert [p.title for _, p in got] == ["t10", None, "t20", "t30", None, "t50"]
    assert [[r.key for r in b] for b in packed(rows, 2)] == [[0, 1, 2], [3, 4, 5]]
    # planned batches are answered as cut, even short ones
    rec.calls.clear()
    list(answer_batches([[rows[0]], [rows[2], rows[3]]], rec))
    assert rec.calls == [[10], [20, 30]]


def test_photos_are_batched_with_photos_of_their_shape_and_answered_in_order() -> None:
    class Recording:
        batch_size = 2

        def __init__(self) -> None:
            self.calls: list[list[tuple[int, int]]] = []

        def predict(self, images: list[Any], **kwargs: Any) -> list[Prediction]:
            self.calls.append([im.size for im in images])
            return [Prediction(title=f"{im.width}x{im.height}") for im in images]

    sizes = [(300, 100), (100, 300), (310, 100), "bad", (100, 310), (200, 200), (210, 200)]
    rows = [Row(i, s if isinstance(s, str) else Image.new("RGB", s)) for i, s in enumerate(sizes)]
    rec = Recording()
    got = list(answer_rows(rows, rec, window=4))
    # tall with tall, square with square, wide with wide: each batch one shape of photo
    assert rec.calls == [[(100, 310), (100, 300)], [(200, 200), (210, 200)],
                         [(300, 100), (310, 100)]]
    assert [r.key for r, _ in got] == list(range(len(sizes)))
    assert [p.title for _, p in got] == [
        "300x100", "100x300", "310x100", None, "100x310", "200x200", "210x200"]


def test_plan_cuts_by_position_so_shards_and_resumes_see_the_same_batches() -> None:
    keys = list(range(10))
    one = plan(keys, 3, set())
    assert one == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    two = [plan(keys, 3, set(), rank, 2) for rank in (0, 1)]
    assert two == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9]]]
    assert plan(keys, 3, {0, 1, 2, 4}) == [[3, 5], [6, 7, 8], [9]]  # a batch done is skipped


def test_a_streamed_plan_cuts_the_same_batches_and_pulls_lazily() -> None:
    import random

    rng = random.Random(0)
    for _ in range(50):
        keys = rng.sample(range(1000), rng.randrange(0, 40))  # row numbers, not positions
        done = set(rng.sample(keys, rng.randrange(0, len(keys) + 1)))
        size, world = rng.randrange(1, 7), rng.randrange(1, 4)
        for rank in range(world):
            streamed = list(plan_stream(iter(keys), size, done, rank, world))
            assert streamed == [[keys[i] for i in b] for b in plan(keys, size, done, rank, world)]
    pulled: list[int] = []

    def rows():
        for k in range(10**9):  # endless: only what the first batches need is read
            pulled.append(k)
            yield k

    first = next(plan_stream(rows(), 4, {0}))
    assert first == [1, 2, 3] and len(pulled) == 4


def test_payload_files_hold_every_payload_in_order(tmp_path: Path) -> None:
    from productvlm.inference.raydata import write_payloads

    folder = tmp_path / "plan"
    (folder / "old").mkdir(parents=True)  # a previous run's plan is replaced
    written = write_payloads(folder, (json.dumps([i, "é"]) for i in range(10)), per_file=4)
    files = sorted(folder.glob("*.jsonl"))
    assert written.count == 10 and len(files) == 3 and not (folder / "old").exists()
    lines = [x for f in files for x in f.read_text(encoding="utf-8").splitlines()]
    assert [json.loads(x) for x in lines] == [[i, "é"] for i in range(10)]


def test_parts_survive_a_torn_line_and_a_row_written_twice(tmp_path: Path) -> None:
    parts = Parts(tmp_path / "parts", key_field="row")
    assert parts.read() == [] and parts.done() == set()
    with parts.writer(rank=1) as write:
        write([{"row": 5, "x": "b"}, {"row": 2, "x": "a"}])
    with parts.writer(rank=0) as write:
        write([{"row": 7, "x": "é"}])
    with (tmp_path / "parts" / "rank0.jsonl").open("a") as f:
        f.write(json.dumps({"row": 5, "x": "again"}) + "\n" + '{"row": 9, "x"')  # killed
    assert [r["row"] for r in parts.read()] == [2, 5, 7]
    assert parts.done() == {2, 5, 7}
    assert {r["row"]: r["x"] for r in parts.read()}[7] == "é"


def test_rank_and_world_come_from_the_launcher(monkeypatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (dist.rank(), dist.world_size(), dist.is_main_process()) == (0, 1, True)
    dist.barrier()  # one process: returns at once, joins no process group
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (dist.rank(), dist.world_size(), dist.is_main_process()) == (2, 4, False)
