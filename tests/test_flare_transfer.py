"""Bulk transfer of models in deployment (``runtime.flare.transfer``), without a consortium: the
global model is serialised once for all of a task's sites, and an update a site offers is
written to an unlinked file within bounds, never unpickled, and read back exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.fuel.f3.streaming.download_service import ProduceRC

from fedseg.plans.checks import check_weights
from fedseg.runtime.flare import transfer, wire

MODEL = {"enc.conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "enc.conv.bias": np.ones(2, np.float32),
         "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "steps": np.array(7), "empty": np.zeros((0, 3))}


def items(arrays) -> list[bytes]:
    """What a site's offer produces: the pieces of its arrays."""
    shared = transfer.SharedArrays(arrays, receivers=1)
    return [shared.produce_item(i) for i in range(shared.get_item_count())]


def piece(name="w", dtype="<f8", shape=(4,), at=0, data=bytes(32), **extra) -> bytes:
    header = json.dumps({"name": name, "dtype": dtype, "shape": list(shape), "at": at, **extra}).encode()
    return len(header).to_bytes(4, "big") + header + data


def sink(tmp_path, max_bytes=None, max_arrays=None) -> transfer.UpdateFile:
    bound = transfer.update_bound(MODEL)
    return transfer.UpdateFile(tmp_path / "incoming", bound[0] if max_bytes is None else max_bytes,
                               bound[1] if max_arrays is None else max_arrays)


def test_an_update_comes_back_from_its_file_exactly_and_passes_the_engine_checks(tmp_path):
    update = sink(tmp_path)
    update.consume_items(items(MODEL), None)
    weights = transfer.FileWeights(update.file, update.index)
    assert list(weights) == list(MODEL) and weights.nbytes() == sum(v.nbytes for v in MODEL.values())
    for name, value in MODEL.items():
        back = weights[name]
        assert back.dtype == value.dtype and back.shape == value.shape and np.array_equal(back, value)
        assert back is not weights[name]  # a new array each time: nothing held in memory
    check_weights(weights, MODEL)  # the round engine's check takes the table as it is
    assert list((tmp_path / "incoming").iterdir()) == []  # the file has no name
    reply = wire.reply_from_wire("train", FLModel(params=weights, metrics={"train_loss": 0.1}, meta={"n_samples": 2}))
    assert reply.weights is weights and reply.n_samples == 2


class Counting(transfer.SharedArrays):
    made = 0

    def produce_item(self, index: int) -> bytes:
        Counting.made += 1
        return super().produce_item(index)


def fetch_all(shared, requester: str) -> list[bytes]:
    got, state = [], {}
    while True:
        rc, data, state = shared.produce(state, requester)
        if rc == ProduceRC.EOF:
            return got
        got += data


def test_the_global_model_is_serialised_once_for_all_the_sites_of_a_task():
    class Cell:  # FLARE's download service only registers its handlers on the cell here
        def register_request_cb(self, **kwargs):
            pass

    Counting.made = 0
    model = {f"layer{i}": np.full((900, 900), i, np.float32) for i in range(4)}  # 3.2 MB each: two pieces
    shared = Counting(model, receivers=3)
    downloader = transfer.ObjectDownloader(cell=Cell(), timeout=60, num_receivers=0)
    try:
        downloader.add_object(shared)
        assert shared.num_receivers == 3  # the transaction counts none: a site restarted whole is served again
        fetched = [fetch_all(shared, f"site{i}") for i in range(3)]
        assert Counting.made == 2 * len(model) and fetched[0] == fetched[1] == fetched[2]
        assert max(map(len, fetched[0])) < transfer.PIECE_BYTES + 200  # a reply never holds a whole large array
        assert fetch_all(shared, "site0") == fetched[0] and Counting.made == 4 * len(model)  # made again, once
    finally:
        downloader.delete_transaction()


@pytest.mark.parametrize("bad, reason", [
    ([piece(dtype="|O")], "not plain numbers"),  # objects (a pickle): refused, never loaded
    ([piece(dtype="|V8")], "not plain numbers"),
    ([piece(dtype="f8")], "not plain numbers"),  # not numpy's own spelling: no second way to name a dtype
    ([piece(), piece()], "does not follow"),  # the same array twice
    ([piece(at=8, data=bytes(8))], "does not follow"),  # a gap
    ([piece(data=bytes(40))], "does not follow"),  # past the array's end
    ([piece(shape=(10**6,), data=b"")], "more than"),  # past the byte bound
    ([piece(shape=(-1,))], "does not fit"),
    ([piece(name="")], "does not fit"),
    ([piece(extra=1)], "must name"),
    ([b"\xff\xff\xff\xff{}"], "short header"),
    (["text"], "short header"),
])
def test_a_hostile_or_oversized_update_is_refused_within_its_bounds(tmp_path, bad, reason):
    update = sink(tmp_path, max_bytes=10**5)
    with pytest.raises(ValueError, match=reason):
        update.consume_items(bad, None)
    assert update.written <= 10**5


def test_an_array_that_came_in_part_fails_the_download(tmp_path):
    update = sink(tmp_path)
    update.consume_items([piece(data=bytes(16))], None)
    update.download_completed("ref")
    assert "came in part" in update.error


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(max_size=400), max_size=3), st.integers(0, 5), st.integers(0, 2000))
def test_any_bytes_from_a_site_are_refused_or_stay_within_the_bounds(tmp_path, noise, cut, max_bytes):
    real = items({"w": np.arange(100, dtype=np.float64), "b": np.ones(3, np.float32)})
    blobs = [*noise, *(item[:len(item) - cut] for item in real)]  # garbage, then the real pieces cut short
    update = sink(tmp_path, max_bytes=max_bytes, max_arrays=2)
    try:
        update.consume_items(blobs, None)
        update.download_completed("ref")
    except ValueError:
        update.error = "refused"
    assert update.written <= max_bytes and len(update.index) <= 2
    if update.error is None:  # taken: every array reads back in full, as the site sent it
        weights = transfer.FileWeights(update.file, update.index)
        assert all(np.array_equal(weights[name], value) for name, value in
                   {"w": np.arange(100, dtype=np.float64), "b": np.ones(3, np.float32)}.items()) and not noise


@pytest.mark.parametrize("ref", [None, 3, "", "x" * 81, "a\nb"])
def test_a_download_reference_must_be_short_printable_text(ref):
    with pytest.raises(ValueError, match="reference"):
        transfer.check_ref(ref)
