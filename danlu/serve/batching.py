"""Micro-batching: requests that arrive within a few milliseconds of each other share one
forward pass.

The first request waits up to `wait` seconds for more, until `max_rows` rows are gathered; the
batch then runs on the model's worker thread (`run(list of items) -> list of results`), so the
event loop keeps accepting requests meanwhile. When a batch fails (one request's rows are
bad), each of its requests runs alone, so only the bad one gets the error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any


class MicroBatcher:
    def __init__(
        self,
        run: Callable[[list[Any]], list[Any]],
        size: Callable[[Any], int],
        worker: Executor,
        max_rows: int = 64,
        wait: float = 0.002,
    ) -> None:
        self.run, self.size, self.worker = run, size, worker
        self.max_rows, self.wait = max_rows, wait
        self.queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] | None = None
        self.task: asyncio.Task[None] | None = None
        self.batches = 0  # forward passes run (the tests and /metrics read it)

    @property
    def depth(self) -> int:
        return 0 if self.queue is None else self.queue.qsize()

    async def submit(self, item: Any) -> Any:
        if self.task is None or self.task.done():  # started in the serving loop, on first use
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._loop())
        assert self.queue is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self.queue.put((item, future))
        return await future

    async def _loop(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            rows = self.size(batch[0][0])
            deadline = loop.time() + self.wait
            while rows < self.max_rows:
                left = deadline - loop.time()
                try:
                    if left <= 0:
                        nxt = self.queue.get_nowait()
                    else:
                        nxt = await asyncio.wait_for(self.queue.get(), left)
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                batch.append(nxt)
                rows += self.size(nxt[0])
            live = [(item, f) for item, f in batch if not f.done()]  # cancelled: client gone
            if live:
                await self._run(live)

    async def _run(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        loop = asyncio.get_running_loop()
        items = [item for item, _ in batch]
        self.batches += 1
        try:
            results = await loop.run_in_executor(self.worker, self.run, items)
        except Exception as e:
            if len(batch) == 1:
                _settle(batch[0][1], error=e)
                return
            for item, future in batch:  # find the bad request: each alone
                await self._run([(item, future)])
            return
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


def _settle(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
