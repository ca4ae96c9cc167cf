"""A TCP delay line like ../shared/tools/delay_proxy.py (same flags), with
sub-millisecond release times.

delay_proxy.py releases each chunk from an asyncio timer, and asyncio's
epoll timeouts are whole milliseconds: a chunk is released up to 1 ms late,
and a second chunk read a moment after the first waits for a timer of its
own, so an exchange made of several pieces pays the rounding more than once
while the one-piece echo used as the "1 RTT" unit pays it once. Here every
direction of every connection has a reader thread (timestamps each chunk)
and a writer thread that sleeps until each chunk is due (nanosleep, ~0.1 ms
late at worst), so the delay is rtt/2 per direction whatever the piece
count. Order is kept, EOF is passed on after the same delay, TCP_NODELAY on
both legs.

Bandwidth is unlimited unless --rate-mbit is given: then each direction is a
bottleneck that sends at that rate, behind a queue of --queue-kib (a
router's buffer). Once the queue is full the line stops reading, so the
sender's own socket fills, as behind a slow link. This is what shows how
much a sender queues ahead of a small answer while a download runs.

    precise_delay_proxy.py --listen 127.0.0.1:0 --target 127.0.0.1:7676 \\
                           --rtt-ms 50 [--rate-mbit 100 --queue-kib 256] \\
                           --port-file /tmp/p
"""
import argparse
import os
import queue
import socket
import threading
import time

CHUNK = 256 * 1024


def _hostport(s):
    host, _, port = s.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


# Pieces read while rate-limited: the queue's unit, small enough for a
# small answer to slip in between a download's pieces.
RATED_CHUNK = 16 * 1024


def _sleep_until(t):
    wait = t - time.monotonic()
    if wait > 0:
        time.sleep(wait)


def _pump(src, dst, delay_s, rate, queue_bytes):
    q = queue.Queue()
    if rate:
        # reader -> bounded queue -> bottleneck at `rate` -> delay -> writer
        held = queue.Queue(maxsize=max(1, queue_bytes // RATED_CHUNK))
        size, put = RATED_CHUNK, held.put

        def bottleneck():
            free_at = time.monotonic()
            while True:
                data = held.get()
                free_at = max(free_at, time.monotonic()) + len(data) * 8 / rate
                _sleep_until(free_at)
                q.put((free_at + delay_s, data))
                if not data:
                    return

        threading.Thread(target=bottleneck, daemon=True).start()
    else:
        size = CHUNK

        def put(data):
            q.put((time.monotonic() + delay_s, data))

    def reader():
        while True:
            try:
                data = src.recv(size)
            except OSError:
                data = b""
            put(data)
            if not data:
                return

    def writer():
        while True:
            due, data = q.get()
            _sleep_until(due)
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=writer, daemon=True).start()


def _serve(conn, target, delay_s, rate, queue_bytes):
    try:
        up = socket.create_connection(target)
    except OSError:
        conn.close()
        return
    for s in (conn, up):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _pump(conn, up, delay_s, rate, queue_bytes)
    _pump(up, conn, delay_s, rate, queue_bytes)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--target", required=True)
    ap.add_argument("--rtt-ms", type=float, default=0.0)
    ap.add_argument("--port-file")
    ap.add_argument("--rate-mbit", type=float, default=0.0,
                    help="each direction's bandwidth, Mbit/s (0 = unlimited)")
    ap.add_argument("--queue-kib", type=int, default=256,
                    help="the bottleneck's queue, KiB (with --rate-mbit)")
    args = ap.parse_args()
    delay_s = args.rtt_ms / 2000.0
    rate = args.rate_mbit * 1e6
    queue_bytes = args.queue_kib * 1024
    target = _hostport(args.target)
    lsock = socket.create_server(_hostport(args.listen))
    if rate:
        # A small receive buffer, so a full bottleneck pushes back on the
        # sender's own socket at once (a loopback leg has no congestion
        # window to do it).
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RATED_CHUNK * 4)
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(lsock.getsockname()[1]))
        os.replace(tmp, args.port_file)
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=_serve, args=(conn, target, delay_s, rate, queue_bytes),
                         daemon=True).start()


if __name__ == "__main__":
    main()
