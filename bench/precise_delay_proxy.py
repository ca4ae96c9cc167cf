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
count. Bandwidth is unlimited, order is kept, EOF is passed on after the
same delay, TCP_NODELAY on both legs.

    precise_delay_proxy.py --listen 127.0.0.1:0 --target 127.0.0.1:7676 \\
                           --rtt-ms 50 --port-file /tmp/p
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


def _pump(src, dst, delay_s):
    q = queue.Queue()

    def reader():
        while True:
            try:
                data = src.recv(CHUNK)
            except OSError:
                data = b""
            q.put((time.monotonic() + delay_s, data))
            if not data:
                return

    def writer():
        while True:
            due, data = q.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    threading.Thread(target=reader, daemon=True).start()
    threading.Thread(target=writer, daemon=True).start()


def _serve(conn, target, delay_s):
    try:
        up = socket.create_connection(target)
    except OSError:
        conn.close()
        return
    for s in (conn, up):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    _pump(conn, up, delay_s)
    _pump(up, conn, delay_s)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--target", required=True)
    ap.add_argument("--rtt-ms", type=float, default=0.0)
    ap.add_argument("--port-file")
    args = ap.parse_args()
    delay_s = args.rtt_ms / 2000.0
    target = _hostport(args.target)
    lsock = socket.create_server(_hostport(args.listen))
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(lsock.getsockname()[1]))
        os.replace(tmp, args.port_file)
    while True:
        conn, _ = lsock.accept()
        threading.Thread(target=_serve, args=(conn, target, delay_s), daemon=True).start()


if __name__ == "__main__":
    main()
