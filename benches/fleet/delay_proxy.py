#!/usr/bin/env python3
"""A TCP proxy on loopback that adds latency: every chunk of bytes is
delivered half a round trip after it arrived, in each direction, in order.

    delay_proxy.py DELAY_FILE LISTEN_PORT:TARGET_PORT [...]

The added round trip, in milliseconds, is read from DELAY_FILE before each
chunk is scheduled, so a benchmark changes it without restarting anything.
This stands in for `tc netem` on kernels without it; bandwidth is not
limited, only latency added. Listens on 127.0.0.1 only and connects only to
127.0.0.1.
"""

import asyncio
import sys
import time


def added_rtt(path):
    try:
        with open(path) as f:
            return float(f.read().strip() or 0) / 1000.0
    except (OSError, ValueError):
        return 0.0


async def pipe(reader, writer, delay_file):
    queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            await queue.put((time.monotonic() + added_rtt(delay_file) / 2, data))
    except ConnectionError:
        pass
    await queue.put((0, None))
    try:
        await sender
    except ConnectionError:
        pass


async def serve(listen, target, delay_file):
    async def handle(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            pipe(client_reader, server_writer, delay_file),
            pipe(server_reader, client_writer, delay_file),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


async def main():
    delay_file = sys.argv[1]
    pairs = [tuple(int(p) for p in arg.split(":")) for arg in sys.argv[2:]]
    await asyncio.gather(*(serve(listen, target, delay_file) for listen, target in pairs))


if __name__ == "__main__":
    asyncio.run(main())
