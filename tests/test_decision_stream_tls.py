"""The decision stream over mutual TLS: the adapter's feed with a certificate from our CA gets the
decisions; a client with no certificate, or one from another CA, is refused in the handshake; a
renewed certificate applies without a restart; a follower controller refuses watchers. The
adapter process on the stream runs against the real kube-apiserver
(tests/e2e/test_metrics_adapter_process.py)."""

import asyncio

import grpc
import pytest

from autoscaler.cli import main
from autoscaler.decision_stream import DecisionHub, MutualTLS, serve_decisions
from autoscaler.proto import decisions_pb2 as pb
from autoscaler.proto import decisions_pb2_grpc as pb_grpc
from metrics_adapter.feed import DecisionFeed
from metrics_adapter.store import MetricStore

from .certs import Authority
from .test_decision_stream import T0, decision, values


def peer(ca: Authority, cn: str, directory, server: bool) -> MutualTLS:
    cert, key = ca.issue(cn, directory, server=server)
    ca_file = directory / "ca.crt"
    ca_file.write_text(ca.pem)
    return MutualTLS(cert, key, ca_file)


@pytest.fixture
async def controller(tmp_path):
    ca = Authority.create("inference-autoscaler-ca")
    hub = DecisionHub()
    hub.publish([decision()])
    server = await serve_decisions(hub, "127.0.0.1:0", peer(ca, "controller", tmp_path / "controller", server=True))
    yield ca, hub, f"127.0.0.1:{server.bound_port}"
    await server.stop(None)


async def first_event(target: str, credentials: grpc.ChannelCredentials | None) -> pb.DecisionEvent:
    options = [("grpc.ssl_target_name_override", "localhost")]
    channel = grpc.aio.secure_channel(target, credentials, options) if credentials else grpc.aio.insecure_channel(target)
    async with channel:
        stream = pb_grpc.DecisionServiceStub(channel).WatchDecisions(pb.WatchRequest(client="test"), timeout=5)
        return await stream.read()


async def test_the_adapter_feed_with_our_ca_gets_decisions(controller, tmp_path):
    ca, _, target = controller
    tls = peer(ca, "metrics-adapter", tmp_path / "adapter", server=False)
    store = MetricStore(stale_after_s=60, max_age_s=300, clock=lambda: T0)
    feed = DecisionFeed(target, store, initial_backoff_s=0.05, tls=tls, server_name="localhost")
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.wait_for(feed.synced.wait(), 10)
        assert values(store) == [("H100", "3")]
    finally:
        task.cancel()


async def test_a_client_without_a_certificate_is_refused(controller, tmp_path):
    ca, _, target = controller
    ca_only = grpc.ssl_channel_credentials(ca.pem.encode())  # trusts the server, presents nothing
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await first_event(target, ca_only)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.aio.AioRpcError):
        await first_event(target, None)  # plaintext


async def test_a_client_with_a_certificate_from_another_ca_is_refused(controller, tmp_path):
    ca, _, target = controller
    rogue = peer(Authority.create("rogue-ca"), "metrics-adapter", tmp_path / "rogue", server=False)
    credentials = grpc.ssl_channel_credentials(ca.pem.encode(), rogue.key_file.read_bytes(), rogue.cert_file.read_bytes())
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await first_event(target, credentials)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_follower_serves_no_decisions(controller, tmp_path):
    ca, hub, target = controller
    tls = peer(ca, "metrics-adapter", tmp_path / "adapter", server=False)
    assert (await first_event(target, tls.channel_credentials())).snapshot.decisions[0].isvc == "chat"
    hub.step_down()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await first_event(target, tls.channel_credentials())
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "not the leader" in refused.value.details()
    hub.leading = True  # elected again: still nothing until its first cycle has published
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await first_event(target, tls.channel_credentials())
    assert "no decisions yet" in refused.value.details()
    hub.publish([])  # a leader with nothing to manage serves an empty snapshot
    assert list((await first_event(target, tls.channel_credentials())).snapshot.decisions) == []


def test_the_adapter_refuses_a_plaintext_stream_off_loopback(tmp_path, capsys):
    cert, key = Authority.create("ca").issue("localhost", tmp_path, server=True)
    args = ["metrics-adapter", "--tls-cert-file", str(cert), "--tls-private-key-file", str(key)]
    assert main([*args, "--decisions", "controller.inference-autoscaler.svc:9090"]) == 2
    error = capsys.readouterr().err
    assert "--decisions-ca-file" in error and "plaintext only to a loopback address" in error and "Traceback" not in error


async def test_a_renewed_certificate_serves_new_connections_without_a_restart(tmp_path):
    old_ca, new_ca = Authority.create("old-ca"), Authority.create("new-ca")
    served = peer(old_ca, "controller", tmp_path / "controller", server=True)
    hub = DecisionHub()
    hub.publish([decision()])
    server = await serve_decisions(hub, "127.0.0.1:0", served)
    target = f"127.0.0.1:{server.bound_port}"
    try:
        client = peer(old_ca, "metrics-adapter", tmp_path / "old-client", server=False)
        assert (await first_event(target, client.channel_credentials())).snapshot.decisions
        # the CA and the serving pair rotate on disk (as a renewal rewrites the mounted files)
        renewed = peer(new_ca, "controller", tmp_path / "renewed", server=True)
        for source, target_file in ((renewed.cert_file, served.cert_file), (renewed.key_file, served.key_file)):
            target_file.write_bytes(source.read_bytes())
        served.ca_file.write_text(new_ca.pem)
        new_client = peer(new_ca, "metrics-adapter", tmp_path / "new-client", server=False)
        assert (await first_event(target, new_client.channel_credentials())).snapshot.decisions
        with pytest.raises(grpc.aio.AioRpcError):  # the old CA's clients are no longer trusted
            await first_event(target, client.channel_credentials())
    finally:
        await server.stop(None)
