from collections import Counter
from pathlib import Path

import pytest

from steer.errors import SteerError
from steer.eval.benchmarks import LOADERS, Item, load_mmlu, stratified_subset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "capability").is_dir(), reason="shared data folder not beside the checkout")


@needs_data
@pytest.mark.parametrize(
    "name,count", [("mmlu", 14042), ("gsm8k", 1319), ("math500", 500), ("aime24", 30), ("aime25", 30)]
)
def test_loaders_read_the_shared_layout(name, count):
    items = LOADERS[name](DATA)
    assert len(items) == count
    assert all(item.question and item.answer for item in items)
    assert len({item.id for item in items}) == count


@needs_data
def test_mmlu_fifty_per_subject_is_seeded():
    items = load_mmlu(DATA)
    sub = stratified_subset(items, 50 * 57, seed=0, equal=True)
    assert len(sub) == 2850 and set(Counter(i.group for i in sub).values()) == {50}
    assert sub == stratified_subset(items, 2850, seed=0, equal=True)
    assert sub != stratified_subset(items, 2850, seed=1, equal=True)


def test_proportional_subset():
    items = [Item(str(i), "q", "a", group="big" if i < 90 else "small") for i in range(100)]
    sub = stratified_subset(items, 10, seed=0)
    assert Counter(i.group for i in sub) == {"big": 9, "small": 1}
    assert stratified_subset(items, None, seed=0) == items


def test_bad_layouts(tmp_path):
    with pytest.raises(SteerError, match="no MMLU data: expected .*capability/mmlu/test"):
        load_mmlu(tmp_path)
    folder = tmp_path / "capability" / "mmlu" / "test"
    folder.mkdir(parents=True)
    (folder / "x_test.csv").write_text("question,A,B\n")
    with pytest.raises(SteerError, match="x_test.csv:1: expected 6 columns"):
        load_mmlu(tmp_path)
    gsm = tmp_path / "capability" / "gsm8k"
    gsm.mkdir(parents=True)
    (gsm / "test.jsonl").write_text('{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(SteerError, match="no '#### <number>' line"):
        LOADERS["gsm8k"](tmp_path)
    with pytest.raises(SteerError, match="no AIME 2024 data"):
        LOADERS["aime24"](tmp_path)
