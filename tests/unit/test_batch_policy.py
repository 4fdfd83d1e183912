"""Which queued requests merge (the host's batching policy), with no process and no socket."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gridgen import DistributedWorker, InvalidRequestError
from gridgen._batching import BatchPolicy
from gridgen._options import RunnerOptions
from gridgen._protocol import HOST_KINDS, Kind, parse
from gridgen._requests import Request, RequestQueue
from gridgen.testing import BatchProbeWorker


def _queue(policy: BatchPolicy, payloads: list[dict[str, Any]]) -> tuple[RequestQueue, list[Request]]:
    queue = RequestQueue(max_queue=64)
    requests = []
    for i, payload in enumerate(payloads, start=1):
        request = Request(i, b"x" * 10, streaming=False, deadline=None, buffer=1, world_size=2,
                          loop=asyncio.get_running_loop())
        request.key, request.units = policy.describe(payload)
        queue.put(request)
        requests.append(request)
    return queue, requests


def _gather(options: RunnerOptions, payloads: list[dict[str, Any]]) -> list[list[int] | None]:
    """Run the dispatcher's selection until the queue is empty: the ids of each call."""

    async def body() -> list[list[int] | None]:
        policy = BatchPolicy(BatchProbeWorker, 2, options)
        queue, _ = _queue(policy, payloads)
        calls: list[list[int] | None] = []
        while (head := queue.pop()) is not None:
            batch = await policy.gather(head, queue)
            calls.append(None if batch is None else [r.id for r in batch])
        return calls

    return asyncio.run(body())


def test_same_keys_merge_in_queue_order_and_others_keep_their_places() -> None:
    payloads = [{"batch": "x"}, {"batch": "y"}, {"batch": "x"}, {}, {"batch": "y"}]
    assert _gather(RunnerOptions(), payloads) == [[1, 3], [2, 5], None]


def test_max_batch_and_max_batch_units_cap_a_call() -> None:
    payloads = [{"batch": "u", "units": u} for u in (1, 1, 1, 3, 3, 9)]
    calls = _gather(RunnerOptions(max_batch=2, max_batch_units=5), payloads)
    assert calls == [[1, 2], [3, 4], [5], [6]]  # the head always runs, even alone over the cap


@pytest.mark.parametrize("max_batch", [0, 1])
def test_max_batch_0_or_1_never_merges_but_still_uses_run_batch(max_batch: int) -> None:
    calls = _gather(RunnerOptions(max_batch=max_batch), [{"batch": "a"}, {"batch": "a"}])
    assert calls == [[1], [2]]


def test_the_frame_limit_caps_a_call() -> None:
    calls = _gather(RunnerOptions(max_message_bytes=200), [{"batch": "a"}] * 4)
    assert calls == [[1, 2], [3, 4]]  # two 10-byte frames plus framing fit in 200 bytes, three do not


def test_a_batch_frame_holds_each_call_frame() -> None:
    async def body() -> Any:
        policy = BatchPolicy(BatchProbeWorker, 2, RunnerOptions())
        from gridgen._protocol import pack_call

        requests = []
        for i in (3, 5):
            request = Request(i, pack_call(i, False, {"batch": "f", "n": i}, max_bytes=None), streaming=False,
                              deadline=None, buffer=1, world_size=2, loop=asyncio.get_running_loop())
            requests.append(request)
        return parse(policy.frame(requests), HOST_KINDS)

    message = asyncio.run(body())
    assert message.kind is Kind.BATCH and message.request_id == 3
    assert [(call.request_id, call.data[1]["n"]) for call in message.data] == [(3, 3), (5, 5)]


def test_describe_asks_the_worker_class_and_checks_its_answers() -> None:
    policy = BatchPolicy(BatchProbeWorker, 2, RunnerOptions())
    assert policy.describe({"batch": "k", "units": 4}) == ("k", 4)
    assert policy.describe({}) == (None, 1)
    with pytest.raises(InvalidRequestError):
        policy.describe({"reject": True})
    with pytest.raises(TypeError, match="hashable"):
        policy.describe({"batch": ["a list"]})
    with pytest.raises(ValueError, match="batch_units must return an int >= 1"):
        policy.describe({"batch": "k", "units": 0})


def test_a_worker_without_batch_key_is_never_merged() -> None:
    assert BatchPolicy(DistributedWorker, 2, RunnerOptions()).describe({"anything": 1}) == (None, 1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_batch": -1}, "max_batch must be an int >= 0"),
        ({"max_batch_units": 0}, "max_batch_units must be None or an int >= 1"),
        ({"batch_wait": -0.1}, "batch_wait must be >= 0"),
    ],
)
def test_batch_options_are_checked(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunnerOptions(**options)


def test_batch_sizes_merge_only_to_the_listed_totals_and_leave_the_rest_queued() -> None:
    one = {"batch": "s"}
    # Sizes (1, 4): three queued one-unit requests cannot make 4, so the head runs alone
    # and the others wait in order; once four are queued together they merge.
    assert _gather(RunnerOptions(batch_sizes=(1, 4)), [one] * 3) == [[1], [2], [3]]
    assert _gather(RunnerOptions(batch_sizes=(1, 4)), [one] * 6) == [[1, 2, 3, 4], [5], [6]]
    # The longest run that reaches a size wins; what follows it stays queued, in order.
    units = [{"batch": "s", "units": u} for u in (2, 2, 3, 4)]
    assert _gather(RunnerOptions(batch_sizes=(4, 8)), units) == [[1, 2], [3], [4]]


def _wait_of_a_lone_head(options: RunnerOptions, units: int) -> float:
    """Seconds ``gather`` took for one queued request of ``units`` with nothing behind it."""

    async def body() -> float:
        policy = BatchPolicy(BatchProbeWorker, 2, options)
        queue, _ = _queue(policy, [{"batch": "w", "units": units}])
        head = queue.pop()
        assert head is not None
        began = asyncio.get_running_loop().time()
        await asyncio.wait_for(policy.gather(head, queue), timeout=10)
        return asyncio.get_running_loop().time() - began

    return asyncio.run(body())


@pytest.mark.parametrize(
    ("options", "units"),
    [
        ({"batch_sizes": (1,)}, 1),  # one warm size: no merge can be served
        ({"batch_sizes": (1, 4)}, 4),  # already the largest size
        ({"max_batch_units": 2}, 2),  # the unit cap is reached
        ({"max_batch": 1}, 1),
    ],
)
def test_a_head_nothing_can_join_starts_without_the_merge_window(options: dict[str, Any], units: int) -> None:
    assert _wait_of_a_lone_head(RunnerOptions(batch_wait=30.0, **options), units) < 5.0


def test_a_head_that_could_still_grow_waits_the_merge_window() -> None:
    assert _wait_of_a_lone_head(RunnerOptions(batch_wait=0.3, batch_sizes=(1, 4)), 1) >= 0.29
    assert _wait_of_a_lone_head(RunnerOptions(batch_wait=0.3, max_batch_units=4), 2) >= 0.29


def test_batch_sizes_keep_other_keys_in_their_places() -> None:
    payloads = [{"batch": "a"}, {"batch": "b"}, {"batch": "a"}, {"batch": "b"}, {"batch": "a"}]
    assert _gather(RunnerOptions(batch_sizes=(2,)), payloads) == [[1, 3], [2, 4], [5]]


@pytest.mark.parametrize("sizes", [(), (0,), (2, -1), ("4",)])
def test_bad_batch_sizes_name_the_option(sizes: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError, match="batch_sizes must be None or ints >= 1"):
        RunnerOptions(batch_sizes=sizes)


class _Gatekeeper(BatchProbeWorker):
    """Refuses, on the host, what its setup arguments do not allow."""

    seen: list[dict[str, Any]] = []

    @classmethod
    def check_payload(cls, payload: dict[str, Any], setup_kwargs: Any) -> None:
        cls.seen.append(dict(setup_kwargs))
        if payload.get("colour") not in setup_kwargs.get("colours", ()):
            raise ValueError(f"colour {payload.get('colour')!r} is not served")


def test_check_payload_sees_the_setup_arguments_and_refuses_before_the_key() -> None:
    setup = {"colours": ["red"]}
    policy = BatchPolicy(_Gatekeeper, 2, RunnerOptions(), setup_kwargs=lambda: setup)
    assert policy.describe({"colour": "red", "batch": "a"}) == ("a", 1)
    with pytest.raises(ValueError, match="'blue' is not served"):
        policy.describe({"colour": "blue", "batch": "a"})
    setup["colours"] = ["red", "blue"]  # read at each submit: a restart may change them
    assert policy.describe({"colour": "blue", "batch": "b"}) == ("b", 1)
    assert _Gatekeeper.seen == [{"colours": ["red"]}] * 2 + [{"colours": ["red", "blue"]}]
