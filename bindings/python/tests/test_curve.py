"""CurveZMQ on tcp endpoints, with real certificates: `tidepoold keygen` and pyzmq's, clients
admitted and refused (the daemon serving throughout), SIGHUP, the environment variables, the
rule that non-loopback tcp needs CURVE, and daemon and clients in separate network namespaces
joined by a veth pair, as across hosts."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq
import zmq.auth

import tidepool
from conftest import REPO, TIDEPOOLD, Daemon
from rawproto import PING, PING_REPLY_SIZE, RawClient, header, parse_reply

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces (ip netns)")

X = np.arange(2 * 6 * 6 * 3, dtype=np.float32).reshape(2, 6, 6, 3) / 7


def keygen(directory, name):
    result = subprocess.run([str(TIDEPOOLD), "keygen", str(directory / name)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return directory / f"{name}.key", directory / f"{name}.key_secret"


class Keys:
    """A server pair, clients alice (authorized) and mallory (not), and the directory."""

    def __init__(self, root):
        self.root = root
        self.server, self.server_secret = keygen(root, "server")
        self.alice, self.alice_secret = keygen(root, "alice")
        self.mallory, self.mallory_secret = keygen(root, "mallory")
        self.authorized = root / "authorized"
        self.authorized.mkdir(mode=0o700)
        shutil.copy(self.alice, self.authorized)

    def options(self):
        return ("--curve-secret-key", str(self.server_secret), "--curve-authorized-keys", str(self.authorized))

    def public(self, path):
        return zmq.auth.load_certificate(path)[0].decode()


@pytest.fixture
def keys(tmp_path):
    return Keys(tmp_path)


def wait_for_log(daemon, text, count=1, timeout=30):
    """Until the daemon's log holds `text` `count` times (it logs each reload as it ends)."""
    deadline = time.monotonic() + timeout
    while daemon.logs().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in the log: {daemon.logs()}"
        assert daemon.process.poll() is None, daemon.logs()
        time.sleep(0.01)


def served(endpoint, **curve):
    with tidepool.connect(endpoint, timeout=10, **curve) as client:
        result = client.avg_pool2d(X, 3, 1, 1)
    np.testing.assert_array_equal(result, tidepool.avg_pool2d(X, 3, 1, 1))
    return True


def refused(endpoint, **curve):
    with pytest.raises((tidepool.ConnectionError, tidepool.TimeoutError)) as caught:
        tidepool.connect(endpoint, timeout=3, **curve)
    return str(caught.value)


def test_keygen_writes_zeromq_certificates(tmp_path):
    public, secret = keygen(tmp_path, "pair")
    assert public.stat().st_mode & 0o777 == 0o644 and secret.stat().st_mode & 0o777 == 0o600
    public_key, none = zmq.auth.load_certificate(public)
    same_public, secret_key = zmq.auth.load_certificate(secret)
    assert none is None and public_key == same_public and len(public_key) == 40
    assert zmq.curve_public(secret_key) == public_key
    before = public.read_bytes(), secret.read_bytes()
    again = subprocess.run([str(TIDEPOOLD), "keygen", str(tmp_path / "pair")], capture_output=True, text=True, timeout=30)
    assert again.returncode != 0 and "exists" in again.stderr
    assert (public.read_bytes(), secret.read_bytes()) == before


def test_authorized_clients_are_served_and_others_refused(keys):
    daemon = Daemon("--endpoint", "tcp://127.0.0.1:0", *keys.options())
    try:
        tcp = daemon.endpoints[1]
        assert served(tcp, curve_server_key=keys.server, curve_client_cert=keys.alice_secret)
        # The server key also as its 40 Z85 characters.
        assert served(tcp, curve_server_key=keys.public(keys.server), curve_client_cert=str(keys.alice_secret))
        message = refused(tcp, curve_server_key=keys.server, curve_client_cert=keys.mallory_secret)
        assert "not among the daemon's authorized keys" in message
        assert keys.public(keys.mallory) in daemon.logs() and "not authorized" in daemon.logs()
        refused(tcp)
        wait_for_log(daemon, "the handshake")  # refused by libzmq before ZAP, logged all the same
        refused(tcp, curve_server_key=keys.mallory, curve_client_cert=keys.alice_secret)  # not the server's key
        # A raw ZeroMQ client without CURVE never gets an answer, let alone a job.
        raw = RawClient(tcp)
        raw.socket.send_multipart([header(PING, 1)])
        assert raw.socket.poll(1000) == 0
        raw.close()
        # Served throughout, over tcp and ipc (where the kernel names the peer, and CURVE is not spoken).
        assert served(tcp, curve_server_key=keys.server, curve_client_cert=keys.alice_secret)
        with tidepool.connect(daemon.endpoint) as local:
            stats = local.stats()
            assert served(daemon.endpoint)
        assert stats["curve"] is True and stats["curve_authorized_keys"] == 1 and stats["curve_refusals"] >= 1
    finally:
        assert daemon.stop() == 0, daemon.logs()


def test_pyzmq_certificates_a_raw_client_and_sighup(keys):
    """Certificates made by pyzmq work once private; a raw pyzmq DEALER connects as
    docs/protocol.md says; SIGHUP re-reads the directory, and keeps the old keys when the
    directory has become unsafe."""
    daemon = Daemon("--endpoint", "tcp://127.0.0.1:0", *keys.options())
    try:
        tcp = daemon.endpoints[1]
        bob_public, bob_secret = zmq.auth.create_certificates(str(keys.root), "bob")
        with pytest.raises(tidepool.InvalidArgumentError, match="chmod 600"):
            tidepool.connect(tcp, curve_server_key=keys.server, curve_client_cert=bob_secret)
        os.chmod(bob_secret, 0o600)
        refused(tcp, curve_server_key=keys.server, curve_client_cert=bob_secret)

        shutil.copy(bob_public, keys.authorized)
        (keys.authorized / "alice.key").unlink()
        daemon.process.send_signal(signal.SIGHUP)
        wait_for_log(daemon, "authorized keys reloaded")
        assert served(tcp, curve_server_key=keys.server, curve_client_cert=bob_secret)
        refused(tcp, curve_server_key=keys.server, curve_client_cert=keys.alice_secret)

        bob = zmq.auth.load_certificate(bob_secret)
        raw = RawClient(tcp, curve=(keys.public(keys.server).encode(), bob[0], bob[1]))
        kind, _, status, frames = raw.call([header(PING, 9)])
        assert (kind, status, len(frames[0])) == (PING | 0x8000, 0, PING_REPLY_SIZE)
        raw.close()

        os.chmod(keys.authorized, 0o777)
        daemon.process.send_signal(signal.SIGHUP)
        wait_for_log(daemon, "cannot reload the authorized keys")
        assert "chmod go-w" in daemon.logs()
        assert served(tcp, curve_server_key=keys.server, curve_client_cert=bob_secret)
        os.chmod(keys.authorized, 0o700)
    finally:
        assert daemon.stop() == 0, daemon.logs()


def test_environment_variables(keys, monkeypatch):
    daemon = Daemon("--endpoint", "tcp://127.0.0.1:0", *keys.options())
    try:
        tcp = daemon.endpoints[1]
        monkeypatch.setenv("TIDEPOOL_CURVE_SERVER_KEY", str(keys.server))
        monkeypatch.setenv("TIDEPOOL_CURVE_CLIENT_CERT", str(keys.alice_secret))
        assert served(tcp)
        assert served(daemon.endpoint)  # ipc ignores them
        refused(tcp, curve_server_key="", curve_client_cert="")  # "" means none
        monkeypatch.delenv("TIDEPOOL_CURVE_SERVER_KEY")
        with pytest.raises(tidepool.InvalidArgumentError, match="TIDEPOOL_CURVE_SERVER_KEY"):
            tidepool.connect(tcp)
        with pytest.raises(tidepool.InvalidArgumentError, match="are for tcp:// endpoints"):
            tidepool.connect(daemon.endpoint, curve_server_key=keys.server, curve_client_cert=keys.alice_secret)
    finally:
        assert daemon.stop() == 0, daemon.logs()


def start_failure(*options, prefix=()):
    """The daemon's complaint when it refuses to start with `options`."""
    result = subprocess.run([*prefix, str(TIDEPOOLD), *options], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stdout
    return result.stderr


def test_non_loopback_tcp_needs_curve_or_insecure(keys):
    for endpoint in ("tcp://0.0.0.0:0", "tcp://*:0"):
        assert "--insecure" in start_failure("--endpoint", endpoint)
    for options in (("--insecure",), keys.options()):
        daemon = Daemon("--endpoint", "tcp://0.0.0.0:0", *options)
        assert daemon.stop() == 0, daemon.logs()
    os.chmod(keys.server_secret, 0o644)
    assert "chmod 600" in start_failure("--endpoint", "tcp://127.0.0.1:0", *keys.options())
    assert "--curve-authorized-keys" in start_failure("--curve-secret-key", str(keys.server_secret))


# ---- Across hosts: two network namespaces joined by a veth pair --------------------------

CLIENT = """
import json, sys
import numpy as np
import tidepool
endpoint, server_key, client_cert = sys.argv[1:4]
curve = {} if server_key == "-" else dict(curve_server_key=server_key, curve_client_cert=client_cert)
x = np.arange(2 * 6 * 6 * 3, dtype=np.float32).reshape(2, 6, 6, 3) / 7
try:
    with tidepool.connect(endpoint, timeout=3, **curve) as client:
        y = client.avg_pool2d(x, 3, 1, 1)
    print(json.dumps({"served": bool((y == tidepool.avg_pool2d(x, 3, 1, 1)).all())}))
except (tidepool.ConnectionError, tidepool.TimeoutError) as error:
    print(json.dumps({"refused": type(error).__name__, "message": str(error)}))
"""


class Namespaces:
    """Network namespaces `server` and `client`, joined by a veth pair on a private /30."""

    def __init__(self):
        tag = f"tp{os.getpid() % 100000}"
        self.server, self.client = f"{tag}s", f"{tag}c"
        third = os.getpid() % 250 + 1
        self.server_address, self.client_address = f"10.213.{third}.1", f"10.213.{third}.2"
        self.made = []

    def ip(self, *arguments):
        subprocess.run(["ip", *arguments], check=True, capture_output=True, text=True, timeout=30)

    def __enter__(self):
        try:
            for name in (self.server, self.client):
                self.ip("netns", "add", name)
                self.made.append(name)
            self.ip("link", "add", f"{self.server}v", "netns", self.server, "type", "veth",
                    "peer", "name", f"{self.client}v", "netns", self.client)
            for name, address in ((self.server, self.server_address), (self.client, self.client_address)):
                self.ip("-n", name, "addr", "add", f"{address}/30", "dev", f"{name}v")
                self.ip("-n", name, "link", "set", f"{name}v", "up")
                self.ip("-n", name, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as error:
            self.__exit__()
            pytest.skip(f"cannot make network namespaces here: {error.stderr.strip()}")
        return self

    def __exit__(self, *exc):
        for name in self.made:  # the veth pair goes with its namespaces
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)

    def run_client(self, endpoint, server_key="-", client_cert="-"):
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "bindings" / "python"),
                                                                     os.environ.get("PYTHONPATH", "")]))
        environment.pop("TIDEPOOL_CURVE_SERVER_KEY", None)
        environment.pop("TIDEPOOL_CURVE_CLIENT_CERT", None)
        result = subprocess.run(["ip", "netns", "exec", self.client, sys.executable, "-c", CLIENT, endpoint,
                                 str(server_key), str(client_cert)],
                                capture_output=True, text=True, timeout=60, env=environment)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@needs_root
def test_across_network_namespaces(keys):
    if shutil.which("ip") is None:
        pytest.skip("iproute2's ip is not installed")
    with Namespaces() as net:
        inside = ("ip", "netns", "exec", net.server)
        address = f"tcp://{net.server_address}:0"
        assert "--insecure" in start_failure("--endpoint", address, prefix=inside)
        daemon = Daemon("--endpoint", address, *keys.options(), prefix=inside)
        try:
            tcp = daemon.endpoints[1]
            assert tcp.startswith(f"tcp://{net.server_address}:")
            assert net.run_client(tcp, keys.server, keys.alice_secret) == {"served": True}
            mallory = net.run_client(tcp, keys.server, keys.mallory_secret)
            assert "not among the daemon's authorized keys" in mallory["message"]
            assert "refused" in net.run_client(tcp)
            assert keys.public(keys.mallory) in daemon.logs()
            assert net.run_client(tcp, keys.server, keys.alice_secret) == {"served": True}
            # Not reachable from this namespace (the host's): the endpoint lives in the server's.
            assert "refused" in json.loads(subprocess.run(
                [sys.executable, "-c", CLIENT, tcp, str(keys.server), str(keys.alice_secret)], capture_output=True,
                text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO / "bindings" / "python"))).stdout)
        finally:
            assert daemon.stop() == 0, daemon.logs()
        # --insecure serves plain tcp across hosts, as it says.
        daemon = Daemon("--endpoint", address, "--insecure", prefix=inside)
        try:
            assert net.run_client(daemon.endpoints[1]) == {"served": True}
        finally:
            assert daemon.stop() == 0, daemon.logs()

