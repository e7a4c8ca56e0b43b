"""Our gRPC servers (the decision stream, KEDA's external scaler) with streams open: a client
leaving mid-stream, and the server stopping with or without a grace, print no traceback and leave
no handler running. Each case runs on an event loop of its own that closes when it ends, as a
process's does at exit: that close is what made grpc print a CancelledError's traceback for a
handler still pending after `stop` (autoscaler/grpc_server.py)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from autoscaler.decision_stream import DecisionHub, serve_decisions
from autoscaler.proto import decisions_pb2 as pb
from autoscaler.proto import decisions_pb2_grpc as pb_grpc
from metrics_adapter.keda import serve_keda
from metrics_adapter.store import MetricStore

from .test_decision_stream import decision, wait_for
from .test_keda_scaler import KedaClient, decided, ref

# whether a handler has ended when grpc's `stop` returns is a race: a few streams, a few rounds
STREAMS, ROUNDS = 10, 20


async def decision_streams(channel_of):
    """The DecisionService with watchers; returns the server, the open calls and a check that
    every watcher has left the hub."""
    hub = DecisionHub()
    hub.publish([decision()])
    server = await serve_decisions(hub, "127.0.0.1:0")
    channel = channel_of(server.bound_port)
    calls = [pb_grpc.DecisionServiceStub(channel).WatchDecisions(pb.WatchRequest(client=f"test-{i}")) for i in range(STREAMS)]
    for call in calls:
        assert (await call.read()).HasField("snapshot")
    return server, channel, calls, lambda: not hub._watchers


async def keda_streams(channel_of):
    """KEDA's StreamIsActive, as an `external-push` trigger holds it open."""
    store = MetricStore(stale_after_s=60, max_age_s=300)
    decided(store, 2)
    server = await serve_keda(store, "127.0.0.1:0", push_interval_s=0.02)
    channel = channel_of(server.bound_port)
    calls = [KedaClient(channel).stream_is_active(ref(isvc="chat")) for _ in range(STREAMS)]
    for call in calls:
        assert (await call.read()).result is True
    return server, channel, calls, lambda: True


@pytest.mark.parametrize("streams", [decision_streams, keda_streams], ids=["decisions", "keda"])
@pytest.mark.parametrize("ending", ["client leaves", "stop with grace", "stop at once"])
def test_no_traceback_when_a_stream_ends(streams, ending, capfd):
    async def scenario():
        server, channel, calls, all_left = await streams(lambda port: grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        if ending == "client leaves":
            for call in calls:
                call.cancel()
            await wait_for(all_left)
            await server.stop(None)
        else:
            await server.stop(0.05 if ending == "stop with grace" else None)
            assert all_left()  # each handler's clean-up ran before `stop` returned
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await call.read()
                assert ended.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        await channel.close()

    for _ in range(ROUNDS):
        asyncio.run(scenario())
    assert "Traceback" not in capfd.readouterr().err
