"""A small Server-Sent Events decoder (the WHATWG ``text/event-stream`` rules).

It is fed bytes as they arrive and hands back whole messages and comments:
lines end in ``\\r\\n``, ``\\n`` or ``\\r``; ``event:`` sets the type,
``data:`` lines are joined with ``\\n``, ``id:`` sets the last event id
(which outlives the message, as the spec says), ``retry:`` the reconnection
delay, a line starting with ``:`` is a comment (the daemon's heartbeats),
and an unfinished message at the end of the stream is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Union

__all__ = ["SseMessage", "SseComment", "SseDecoder"]


@dataclass(frozen=True)
class SseMessage:
    """One dispatched message."""

    #: The ``event:`` field, ``"message"`` when there was none.
    event: str
    #: The ``data:`` lines joined with ``"\\n"``.
    data: str
    #: The last event id when it was dispatched (``None`` if none was ever set).
    id: Optional[str]


@dataclass(frozen=True)
class SseComment:
    """A comment line (``: heartbeat``), without its colon and leading space."""

    text: str


SseItem = Union[SseMessage, SseComment]


class SseDecoder:
    """Incremental decoder: :meth:`feed` it bytes, get messages back."""

    def __init__(self, last_event_id: Optional[str] = None) -> None:
        self._buf = b""
        self._data: List[str] = []
        self._event = ""
        self._first_line = True
        #: The last event id seen (``id:`` field), as the spec's "last event ID buffer".
        self.last_event_id: Optional[str] = last_event_id
        #: The last valid ``retry:`` value in milliseconds, if any.
        self.retry_ms: Optional[int] = None

    def feed(self, chunk: bytes) -> List[SseItem]:
        """Adds bytes; returns the messages and comments they completed."""
        self._buf += chunk
        out: List[SseItem] = []
        buf = self._buf
        start = 0
        n = len(buf)
        while start < n:
            cr = buf.find(b"\r", start)
            lf = buf.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                if cr + 1 == n:
                    # A lone CR at the end: wait to see whether LF follows.
                    break
                end, nxt = cr, (cr + 2 if buf[cr + 1 : cr + 2] == b"\n" else cr + 1)
            else:
                end, nxt = lf, lf + 1
            item = self._line(buf[start:end])
            if item is not None:
                out.append(item)
            start = nxt
        self._buf = buf[start:]
        return out

    def close(self) -> List[SseItem]:
        """Ends the stream: a line ended by a final CR still counts; an
        unterminated line and an unfinished message are dropped (as the spec says)."""
        out: List[SseItem] = []
        if self._buf.endswith(b"\r"):
            item = self._line(self._buf[:-1])
            if item is not None:
                out.append(item)
        self._buf = b""
        self._data = []
        self._event = ""
        return out

    def _line(self, raw: bytes) -> Optional[SseItem]:
        line = raw.decode("utf-8", errors="replace")
        if self._first_line:
            self._first_line = False
            if line.startswith("\ufeff"):
                line = line[1:]
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            text = line[1:]
            return SseComment(text[1:] if text.startswith(" ") else text)
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isdigit():
                self.retry_ms = int(value)
        # Any other field is ignored, as the spec says.
        return None

    def _dispatch(self) -> Optional[SseMessage]:
        if not self._data:
            self._event = ""
            return None
        msg = SseMessage(
            event=self._event or "message",
            data="\n".join(self._data),
            id=self.last_event_id,
        )
        self._data = []
        self._event = ""
        return msg
