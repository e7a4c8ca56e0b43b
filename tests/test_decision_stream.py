"""Decisions from the controller's gRPC DecisionService into the adapter's store, over a real
gRPC connection on loopback, including the controller going away and coming back."""

import asyncio

import pytest

from autoscaler.decision_stream import DecisionHub, serve_decisions
from autoscaler.proto import decisions_pb2 as pb
from metrics_adapter.feed import DecisionFeed
from metrics_adapter.selectors import parse_selector
from metrics_adapter.store import MetricStore

T0 = 1_800_000_000.0


def decision(isvc="chat", replicas=3, accelerator="H100", revision="", at=T0):
    return pb.Decision(
        namespace="prod", isvc=isvc, revision=revision, model="llama-3-8b", accelerator=accelerator, service_class="Premium",
        desired_replicas=replicas, max_batch=256, arrival_rate=12.5, cost_per_hour=12.0, ttft_headroom=0.4, itl_headroom=0.1,
        decided_at=at,
    )  # fmt: skip


async def wait_for(condition, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def values(store, metric="desired_replicas", selector=""):
    import json

    return sorted(
        (json.loads(i)["metricLabels"].get("accelerator"), json.loads(i)["value"])
        for i in store.query("prod", metric, parse_selector(selector))
    )


@pytest.fixture
async def wired():
    clock = [T0]
    hub = DecisionHub()
    hub.publish([decision(), decision("code", 1, "A100")])
    server = await serve_decisions(hub, "127.0.0.1:0")
    store = MetricStore(stale_after_s=60, max_age_s=300, clock=lambda: clock[0])
    feed = DecisionFeed(f"127.0.0.1:{server.bound_port}", store, initial_backoff_s=0.05, max_backoff_s=0.2)
    task = asyncio.create_task(feed.run())
    await asyncio.wait_for(feed.synced.wait(), 5)
    yield hub, server, store, feed, clock
    task.cancel()
    await server.stop(None)


async def test_snapshot_then_updates(wired):
    hub, _, store, _, _ = wired
    assert values(store) == [("A100", "1"), ("H100", "3")]
    assert values(store, "cost_per_hour", "isvc=chat") == [("H100", "12")]
    assert values(store, "arrival_rate", "isvc=chat") == [("H100", "12500m")]
    hub.publish([decision(replicas=5, accelerator="A100"), decision("code", 1, "A100")])  # chat moves GPU type
    await wait_for(lambda: values(store, selector="isvc=chat") == [("A100", "5")])
    hub.publish([decision(replicas=5, accelerator="A100")])  # code is gone
    await wait_for(lambda: values(store, selector="isvc=code") == [])


async def test_revisions_are_series_of_their_own(wired):
    hub, _, store, _, _ = wired
    hub.publish([decision(revision="chat-00001", replicas=2), decision(revision="chat-00002", replicas=4)])
    # upserts arrive before the removal of the ISVC-wide series: wait for the final state, not a count
    await wait_for(lambda: values(store, selector="isvc=chat") == [("H100", "2"), ("H100", "4")])
    assert values(store, selector="revision=chat-00002") == [("H100", "4")]


async def test_controller_gone_values_age_out_then_come_back(wired):
    hub, server, store, feed, clock = wired
    port = server.bound_port
    await server.stop(None)
    await wait_for(lambda: not feed.connected)
    assert values(store) == [("A100", "1"), ("H100", "3")]  # still served
    clock[0] = T0 + 120
    import json

    labels = [json.loads(i)["metricLabels"] for i in store.query("prod", "desired_replicas", parse_selector(""))]
    assert all(label["stale"] == "true" for label in labels)
    clock[0] = T0 + 400
    assert values(store) == []  # too old: the HPA gets nothing and holds its scale
    new_hub = DecisionHub()
    new_hub.publish([decision(replicas=9, at=T0 + 400)])
    restarted = await serve_decisions(new_hub, f"127.0.0.1:{port}")
    try:
        await wait_for(lambda: values(store) == [("H100", "9")])
        assert feed.connected
    finally:
        await restarted.stop(None)


async def test_a_watcher_that_cannot_keep_up_is_cut_off_not_buffered(monkeypatch):
    import autoscaler.decision_stream as stream

    monkeypatch.setattr(stream, "WATCHER_QUEUE_LIMIT", 3)
    hub = DecisionHub()
    queue = asyncio.Queue()
    hub._watchers.add(queue)
    hub.publish([decision(f"s{i}") for i in range(5)])
    assert queue.qsize() == 1 and queue.get_nowait() is None and not hub._watchers
