"""PySocks (python3-socks) as a real UDP ASSOCIATE client of ferry.

Usage: pysocks_udp.py PROXY_HOST PROXY_PORT

Runs a UDP echo server on 127.0.0.1, sends through ferry to it by IPv4 address
and by the name "localhost", has a third party (another port, another address)
send to the relay, then closes the control connection. It prints one JSON
object per step on stdout and waits for "probe" on stdin before checking that
the relay socket is gone. Every socket operation has a timeout.
"""
import json
import socket
import struct
import sys
import threading

import socks

TIMEOUT = 5.0
proxy_host, proxy_port = sys.argv[1], int(sys.argv[2])


def say(**fields):
    print(json.dumps(fields), flush=True)


echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
echo.bind(("127.0.0.1", 0))
echo_port = echo.getsockname()[1]
echoed = []


def serve():
    while True:
        try:
            data, peer = echo.recvfrom(65535)
        except OSError:
            return
        echoed.append(data.decode())
        echo.sendto(data, peer)


threading.Thread(target=serve, daemon=True).start()

client = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
client.set_proxy(socks.SOCKS5, proxy_host, proxy_port)
client.settimeout(TIMEOUT)
client.bind(("127.0.0.1", 0))  # runs UDP ASSOCIATE, declaring this socket's port
control = client._proxyconn.getsockname()
relay = socket.socket.getpeername(client)

replies = []
for host in ("127.0.0.1", "localhost"):
    client.sendto(f"via {host}".encode(), (host, echo_port))
    data, source = client.recvfrom(65535)
    replies.append({"data": data.decode(), "source": [source[0], source[1]]})

# Third parties: the client's IP from another port, and another loopback address.
frame = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", echo_port)
for source in ("127.0.0.1", "127.0.0.2"):
    intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    intruder.bind((source, 0))
    intruder.sendto(frame + f"intruder from {source}".encode(), relay)
    intruder.close()
# Sent after the intruders, so ferry has handled theirs once this one's echo is back.
client.sendto(b"after", ("127.0.0.1", echo_port))
after, _ = client.recvfrom(65535)

say(step="relayed", control=list(control), relay=list(relay), echoPort=echo_port,
    replies=replies, after=after.decode(), echoed=list(echoed))

client._proxyconn.close()
client._proxyconn = None
say(step="closed")

if sys.stdin.readline().strip() == "probe":
    # The relay socket must be gone: a datagram to it draws ICMP port unreachable.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.settimeout(2.0)
    probe.connect(relay)
    probe.send(frame + b"after close")
    try:
        probe.recv(65535)
        outcome = "answered"
    except ConnectionRefusedError:
        outcome = "refused"
    except socket.timeout:
        outcome = "timeout"
    probe.close()
    say(step="probed", outcome=outcome, echoed=list(echoed))
client.close()
echo.close()
