"""Loaders: windows line up, evaluation covers every token once, ranks are disjoint, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from quillgpt.data import (
    PreparedData,
    RandomWindowSampler,
    SequentialWindowSampler,
    TokenWindows,
    make_eval_loader,
    make_train_loader,
)
from quillgpt.data.tokens import FORMAT
from quillgpt.errors import DataError


def fake_prepared(tmp_path, train_len: int = 5000, val_len: int = 1001) -> PreparedData:
    """A prepared folder whose token i is i % 60000: positions are readable from values."""
    splits = {}
    for split, n in (("train", train_len), ("validation", val_len)):
        np.arange(n, dtype=np.uint16).tofile(tmp_path / f"{split}.bin")
        splits[split] = {"tokens": n, "bytes": n}
    (tmp_path / "tokenizer.json").write_text("{}")
    meta = {"format": FORMAT, "vocab_size": 65536, "eot_id": 0, "dtype": "uint16", "splits": splits}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    return PreparedData.load(tmp_path)


def test_window_dataset_returns_shifted_pairs(tmp_path) -> None:
    data = fake_prepared(tmp_path)
    windows = TokenWindows(data.path("train"), data.dtype, block_size=8)
    x, y = windows[10]
    assert x.dtype == torch.int64 and x.shape == (8,)
    assert x.tolist() == list(range(10, 18))
    assert torch.equal(y, x + 1)
    xb, yb = windows.__getitems__([0, 100, 4991])
    assert xb.shape == yb.shape == (3, 8)
    assert xb.is_contiguous() and yb.is_contiguous()
    assert xb[:, 0].tolist() == [0, 100, 4991]
    assert torch.equal(yb[:, :-1], xb[:, 1:])
    assert len(windows) == 4999


def test_train_batches_line_up_and_are_in_range(tmp_path) -> None:
    data = fake_prepared(tmp_path)
    loader = make_train_loader(data, block_size=16, batch_size=4, seed=0, num_steps=50)
    batches = list(loader)
    assert len(batches) == 50
    for x, y in batches:
        assert x.shape == y.shape == (4, 16)
        assert x.dtype == y.dtype == torch.int64
        assert torch.equal(y, x + 1)  # y is x shifted by one
        assert int(y.max()) < 5000


def test_each_epoch_uses_every_window_once(tmp_path) -> None:
    sampler = RandomWindowSampler(5000, 16, 4, seed=7)
    per_epoch = sampler.windows_per_epoch  # 5000 // 16 - 1 = 311 (not a multiple of 4)
    stream = np.concatenate([sampler.batch(s) for s in range(3 * per_epoch // 4 + 1)])
    for epoch in range(3):
        starts = stream[epoch * per_epoch : (epoch + 1) * per_epoch]
        shift = starts.min() % 16
        assert sorted(starts.tolist()) == [shift + 16 * i for i in range(per_epoch)]
        assert starts.max() + 17 <= 5000
    assert not np.array_equal(stream[:per_epoch], stream[per_epoch : 2 * per_epoch])


def test_larger_batch_equals_accumulated_smaller_batches() -> None:
    big = RandomWindowSampler(5000, 16, 12, seed=5)
    small = RandomWindowSampler(5000, 16, 4, seed=5)
    for step in range(200):  # many epochs: 311 windows each, not a multiple of 12
        parts = [small.batch(3 * step + i) for i in range(3)]
        assert np.array_equal(big.batch(step), np.concatenate(parts))


def test_train_is_seeded_and_resumes_at_an_exact_step(tmp_path) -> None:
    data = fake_prepared(tmp_path)
    full = [x for x, _ in make_train_loader(data, 16, 4, seed=3, num_steps=700)]
    again = [x for x, _ in make_train_loader(data, 16, 4, seed=3, num_steps=700)]
    resumed = [x for x, _ in make_train_loader(data, 16, 4, seed=3, start_step=650, num_steps=50)]
    other = [x for x, _ in make_train_loader(data, 16, 4, seed=4, num_steps=5)]
    assert all(torch.equal(a, b) for a, b in zip(full, again, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(full[650:], resumed, strict=True))
    assert not torch.equal(full[0], other[0])


def test_train_loader_is_unbounded_by_default(tmp_path) -> None:
    data = fake_prepared(tmp_path)
    loader = iter(make_train_loader(data, 16, 4))
    steps = [next(loader) for _ in range(1000)]  # about 13 epochs of 311 windows
    assert len(steps) == 1000


def test_workers_give_the_same_batches(tmp_path) -> None:
    data = fake_prepared(tmp_path)
    plain = list(make_train_loader(data, 16, 4, seed=1, num_steps=20))
    workers = list(make_train_loader(data, 16, 4, seed=1, num_steps=20, num_workers=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(plain, workers, strict=True))
    ev_plain = list(make_eval_loader(data, 16, 4))
    ev_workers = list(make_eval_loader(data, 16, 4, num_workers=2))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(ev_plain, ev_workers, strict=True))


def test_ranks_share_out_each_epoch_without_overlap() -> None:
    world, batch = 3, 4
    samplers = [RandomWindowSampler(5000, 16, batch, rank=r, world_size=world) for r in range(3)]
    per_epoch = samplers[0].windows_per_epoch
    steps = per_epoch // (world * batch)
    per_rank = [np.concatenate([s.batch(step) for step in range(steps)]) for s in samplers]
    everything = np.concatenate(per_rank)
    assert len(np.unique(everything)) == len(everything) == steps * world * batch
    # the stream dealt round-robin: rank r holds slots r, r + world, ...
    single = RandomWindowSampler(5000, 16, world * batch)
    stream = np.concatenate([single.batch(step) for step in range(steps)])
    for r in range(world):
        assert np.array_equal(per_rank[r], stream[r::world])


@pytest.mark.parametrize("val_len", [1001, 1025, 1024, 17])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_eval_covers_every_target_exactly_once(tmp_path, val_len, batch_size) -> None:
    data = fake_prepared(tmp_path, val_len=val_len)
    targets = []
    for x, y in make_eval_loader(data, block_size=16, batch_size=batch_size):
        assert x.shape == y.shape and x.shape[1] <= 16
        assert torch.equal(y, x + 1)
        targets.append(y.flatten())
    targets = torch.cat(targets).sort().values
    assert targets.tolist() == list(range(1, val_len))  # every token but the first, once


@pytest.mark.parametrize("world", [2, 3])
def test_eval_ranks_split_the_targets(tmp_path, world) -> None:
    data = fake_prepared(tmp_path, val_len=1001)
    per_rank = [
        torch.cat([y.flatten() for _, y in make_eval_loader(data, 16, 4, rank=r, world_size=world)])
        for r in range(world)
    ]
    everything = torch.cat(per_rank).sort().values
    assert everything.tolist() == list(range(1, 1001))


def test_block_size_longer_than_validation_split(tmp_path) -> None:
    data = fake_prepared(tmp_path, val_len=100)
    with pytest.raises(DataError, match="validation split has 100 tokens, fewer than block_size"):
        make_eval_loader(data, block_size=128, batch_size=4)


def test_train_split_too_short_for_one_step(tmp_path) -> None:
    data = fake_prepared(tmp_path, train_len=100)
    with pytest.raises(DataError, match="train split has 100 tokens, too few"):
        make_train_loader(data, block_size=16, batch_size=8)


def test_bad_rank(tmp_path) -> None:
    data = fake_prepared(tmp_path)
    with pytest.raises(DataError, match="rank"):
        make_train_loader(data, 16, 4, rank=2, world_size=2)


def test_sampler_lengths() -> None:
    assert len(RandomWindowSampler(5000, 16, 4, num_steps=9)) == 9
    with pytest.raises(TypeError):
        len(RandomWindowSampler(5000, 16, 4))
    # 1000 targets: 62 full windows in 16 batches of <= 4, then the short window on its own
    assert len(SequentialWindowSampler(1001, 16, 4)) == 17


def test_windows_pickle_without_the_memory_map(tmp_path) -> None:
    import pickle

    data = fake_prepared(tmp_path)
    windows = TokenWindows(data.path("train"), data.dtype, 8)
    windows[0]
    clone = pickle.loads(pickle.dumps(windows))
    assert clone._tokens is None
    assert torch.equal(clone[5][0], windows[5][0])
