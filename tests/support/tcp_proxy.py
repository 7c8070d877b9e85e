"""A TCP forwarder on 127.0.0.1 that can turn the connections it carries into black holes:
bytes are read and dropped, nothing is closed, so neither end learns of the cut (a network
partition, a firewall dropping an idle flow) until a timeout of its own fires."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Flow:
    writers: tuple[asyncio.StreamWriter, asyncio.StreamWriter]
    silenced: bool = False


@dataclass(slots=True)
class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; :meth:`silence` cuts today's connections."""

    target: tuple[str, int]
    port: int = 0
    _flows: list[_Flow] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        flow = _Flow((writer, up_writer))
        self._flows.append(flow)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, flow)),
            asyncio.create_task(self._pump(up_reader, writer, flow)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            for end in flow.writers:
                end.close()
            self._tasks.difference_update(pumps)

    @staticmethod
    async def _pump(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flow: _Flow
    ) -> None:
        while data := await reader.read(65536):
            if not flow.silenced:
                writer.write(data)
                await writer.drain()

    def silence(self) -> int:
        """Drop, from now on, every byte of the connections open now (new ones still work);
        how many were silenced."""
        live = [flow for flow in self._flows if not flow.silenced]
        for flow in live:
            flow.silenced = True
        return len(live)


@contextlib.asynccontextmanager
async def tcp_proxy(target: tuple[str, int]) -> AsyncIterator[TcpProxy]:
    """A running :class:`TcpProxy`; everything closed on exit."""
    proxy = TcpProxy(target)
    server = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        for flow in proxy._flows:
            for end in flow.writers:
                end.close()
        for task in list(proxy._tasks):
            task.cancel()
        await server.wait_closed()
