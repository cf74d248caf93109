"""An asynchronous write path: a :class:`StoreWriter` fed by a bounded queue, written by one thread.

A GPU relabel loop spends its host time drawing parameters, launching the teacher and writing
entries; while the host encodes and writes an entry, the GPU waits for the next batch.
:class:`BackgroundWriter` moves the writing to one background thread that owns the
:class:`~lpldstore.storage.writer.StoreWriter`::

    with BackgroundWriter(StoreWriter.open(path, part=part)) as writer:
        for epoch, batch in writer.todo():
            ...
            writer.write(epoch, batch, logits=teacher(x).float(), params=params)  # returns at once

``write`` copies its inputs and queues them; it blocks only when ``max_pending`` entries are
already waiting (so memory stays bounded). Torch tensors on any device are accepted: they are
copied (``clone``, asynchronous on a GPU) in the caller's thread and moved to the host in the
writer's thread, so the caller never waits for the GPU. Produce them on the default CUDA stream
(the usual case): the writer's thread copies them on its own default stream.

Semantics are the :class:`StoreWriter`'s: every entry is validated in full before any of it is
written, and committed at a flush, only after its data is on disk. :meth:`flush` and
:meth:`close` wait for every queued entry. An error in the writer's thread (a bad entry, a full
disk) is raised in the caller at its next ``write``, ``flush``, ``todo`` or ``close``, with the
entry it happened on; the entries queued after it are not written (``todo`` lists them again),
the entries written before it are committed on close, as ``StoreWriter`` does on an exception.
Entries still queued when the process dies are simply not committed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Self, TypeVar

import numpy as np
import numpy.typing as npt

from lpldstore.errors import ValidationError
from lpldstore.format.params import AugmentParams
from lpldstore.format.plan import PruningPlan
from lpldstore.storage.writer import StoreWriter

__all__ = ["BackgroundWriter"]

T = TypeVar("T")


def _owned_copy(value: Any) -> Any:
    """A copy the caller can no longer change: numpy arrays copied, tensors cloned (async on a GPU)."""
    clone = getattr(value, "clone", None)
    if callable(clone) and callable(getattr(value, "cpu", None)):  # a torch tensor, without importing torch
        detach = getattr(value, "detach", None)
        return (detach() if callable(detach) else value).clone()
    return None if value is None else np.array(value, copy=True)


def _on_host(value: Any) -> npt.NDArray[Any]:
    """A numpy array of ``value``; a torch tensor is first copied to the host (bfloat16 as float32)."""
    cpu = getattr(value, "cpu", None)
    if callable(cpu):
        value = cpu()
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":
            value = value.float()
        return np.asarray(value.numpy())
    return np.asarray(value)


@dataclasses.dataclass(frozen=True)
class _Entry:
    epoch: int
    batch: int
    logits: Any
    params: AugmentParams
    indices: Any


@dataclasses.dataclass(frozen=True)
class _Call:
    fn: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class BackgroundWriter:
    """Write entries of a :class:`StoreWriter` from one background thread (see the module docstring).

    ``writer`` is owned by the background thread from now on: use only this object. ``max_pending``
    bounds the entries waiting to be written (each holds one batch of logits).
    """

    def __init__(self, writer: StoreWriter, *, max_pending: int = 8) -> None:
        if not isinstance(writer, StoreWriter):
            raise ValidationError(f"Expected a StoreWriter. Got {type(writer).__name__} instead.")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValidationError(f"max_pending must be a positive integer. Got {max_pending!r} instead.")
        self._writer = writer
        self.path, self.where, self.part, self.attrs = writer.path, writer.where, writer.part, writer.attrs
        self._queue: queue.Queue[_Entry | _Call | None] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(
            target=self._run, name=f"lpldstore-writer {writer.where}", daemon=True
        )
        self._thread.start()

    # -- the caller's side ------------------------------------------------------------------------

    @property
    def plan(self) -> PruningPlan:
        return self._writer.plan

    def owns(self, epoch: int, batch: int) -> bool:
        return self._writer.owns(epoch, batch)  # reads only what never changes

    def write(
        self,
        epoch: int,
        batch: int,
        *,
        logits: Any,
        params: AugmentParams,
        indices: npt.ArrayLike | None = None,
    ) -> None:
        """Queue one entry (as :meth:`StoreWriter.write`); returns once it is queued."""
        self._check_usable()
        self._queue.put(_Entry(epoch, batch, _owned_copy(logits), params, _owned_copy(indices)))

    def todo(self) -> list[tuple[int, int]]:
        """As :meth:`StoreWriter.todo`, once every queued entry is written."""
        self._check_usable()
        return self._call(self._writer.todo)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.todo())

    def flush(self) -> None:
        """Write every queued entry, then commit all of them (as :meth:`StoreWriter.flush`)."""
        self._check_usable()
        self._call(self._writer.flush)

    def close(self) -> None:
        """Write every queued entry, commit, stop the thread and close the writer."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)  # after every queued entry
        self._thread.join()
        self._writer.close()  # commits what was written, also after an error
        self._raise_error()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except Exception as background:  # noqa: BLE001 - the caller's exception wins; keep the other visible
            exc.add_note(f"The background writer of {self.where} had also failed: {background!r}")

    # -- internals ------------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise ValidationError(f"{self.where}: this writer is closed; reopen the store to write more.")
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the writer's thread after everything queued before it; raise any error."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put(_Call(fn, future))
        result = future.result()
        self._raise_error()
        return result

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if isinstance(item, _Call):
                if self._error is None:
                    try:
                        item.future.set_result(item.fn())
                        continue
                    except Exception as exc:  # noqa: BLE001 - handed to the caller, never lost
                        self._error = exc
                item.future.set_result(None)  # the caller raises self._error
            elif self._error is None:  # entries queued after an error are not written
                try:
                    self._writer.write(
                        item.epoch,
                        item.batch,
                        logits=_on_host(item.logits),
                        params=item.params,
                        indices=item.indices,
                    )
                except Exception as exc:  # noqa: BLE001 - handed to the caller, never lost
                    exc.add_note(
                        f"(in the background writer of {self.where}, at entry (epoch={item.epoch}, "
                        f"batch={item.batch}); the entries queued after it were not written)"
                    )
                    self._error = exc
