"""The client side of the local API: what the ``ptth`` command line talks to.

It finds the node running for a data directory from the files that node writes there
(``api.json``: its URL; ``api.token``: the bearer token) and turns every answer that is
not a success into :class:`node.NodeError` (or :class:`node.NotRunning`) with the
node's own words.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any, Final

import httpx

from node._errors import NodeError, NotRunning

__all__ = ["ApiClient"]

_JSON: Final = "application/json"


class ApiClient:
    """The CLI's side of the local API of the node running for a data directory."""

    def __init__(self, data_dir: Path, *, timeout: float | None = 30.0) -> None:
        self.data_dir = data_dir
        try:
            info = json.loads((data_dir / "api.json").read_text(encoding="utf-8"))
            token = (data_dir / "api.token").read_text(encoding="ascii").strip()
            self.url = str(info["url"])
        except (OSError, ValueError, KeyError) as exc:
            raise self._not_running() from exc
        self.client = httpx.Client(
            base_url=self.url,
            headers={"authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=5.0),
        )

    def _not_running(self) -> NotRunning:
        return NotRunning(
            f"no node is running for {self.data_dir} "
            f"(start one with 'ptth run --data-dir {self.data_dir}')"
        )

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> Any:
        if response.headers.get("content-type", "").startswith(_JSON):
            value = response.json()
        else:
            value = {"error": response.text.strip()}
        if response.status_code != 200:
            raise NodeError(value.get("error", f"node answered {response.status_code}"))
        return value

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return self._check(self.client.request(method, path, **kwargs))
        except httpx.ConnectError as exc:
            raise self._not_running() from exc
        except httpx.TransportError as exc:
            raise NodeError(f"lost the node's local API at {self.url}: {exc}") from exc

    def send(
        self,
        dst: str,
        body: bytes,
        ct: str | None,
        *,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """Send; with ``wait``, return the answer even for a drop (422) or time-out (504)."""
        headers = {"content-type": ct} if ct else {}
        params: dict[str, str] = {"to": dst, "receipt": "1"}
        if wait:
            params["wait"] = "1"
            if timeout is not None:
                params["timeout"] = f"{timeout:g}"
        try:
            response = self.client.post("send", params=params, content=body, headers=headers)
        except httpx.ConnectError as exc:
            raise self._not_running() from exc
        except httpx.TransportError as exc:
            raise NodeError(f"lost the node's local API at {self.url}: {exc}") from exc
        if wait and response.status_code in (422, 504):
            value = response.json()
            value["status"] = response.status_code
            return value
        return self._check(response)

    def routes(self) -> Any:
        return self.request("GET", "routes")

    def queues(self) -> Any:
        return self.request("GET", "queues")

    def trace(self, frame_id: str) -> Any:
        return self.request("GET", f"trace/{frame_id}")

    def add_peer(self, token: str) -> Any:
        return self.request("POST", "peers", content=token.encode("ascii", "replace"))

    def status(self) -> Any:
        return self.request("GET", "status")

    def ack(self, ids: list[str]) -> int:
        return int(self.request("POST", "inbox/ack", json={"ids": ids})["acked"])

    def _events(self, path: str, params: Any) -> Generator[dict[str, str], None, None]:
        """Yield each Server-Sent Event of ``GET path`` (its fields) as it comes."""
        try:
            with self.client.stream("GET", path, params=params, timeout=None) as response:
                if response.status_code != 200:
                    response.read()
                    self._check(response)
                event: dict[str, str] = {}
                for line in response.iter_lines():
                    if line == "":
                        if event:
                            yield event
                        event = {}
                    elif not line.startswith(":"):
                        field, _, value = line.partition(":")
                        event[field] = value.removeprefix(" ")
        except httpx.ConnectError as exc:
            raise self._not_running() from exc
        except httpx.TransportError as exc:
            raise NodeError(f"lost the node's local API at {self.url}: {exc}") from exc

    def inbox(self, *, follow: bool) -> Any:
        """Yield each message (a dict) as the node streams it."""
        params = {"follow": "1" if follow else "0"}
        with contextlib.closing(self._events("inbox", params)) as events:
            for event in events:
                if event.get("event") == "message":
                    yield json.loads(event["data"])

    def publish(self, topic: str, body: bytes, ct: str | None, ttl: float | None = None) -> Any:
        """Publish; the answer once the node has it in durable custody."""
        headers = {"content-type": ct} if ct else {}
        params = {"topic": topic}
        if ttl is not None:
            params["ttl"] = f"{ttl:g}"
        return self.request("POST", "publish", params=params, content=body, headers=headers)

    def subscribe(
        self, patterns: Sequence[str], *, name: str | None = None
    ) -> Generator[dict[str, Any], None, None]:
        """Yield each publication (a dict) that matches ``patterns`` as the node streams
        it, until the node stops. Closing the generator unsubscribes.

        With ``name`` the subscription is durable (``patterns`` may then be empty: those
        it has): the node streams what is pending for it first, each with its ``seq``;
        acknowledge them with :meth:`ack_subscription`, else they come again."""
        params = [("pattern", pattern) for pattern in patterns]
        if name is not None:
            params.append(("name", name))
        with contextlib.closing(self._events("subscribe", params)) as events:
            yield from _data_of(events, "publication")

    def ack_subscription(self, name: str, seqs: Sequence[int]) -> int:
        """Named subscription ``name`` is done with these; return how many were pending."""
        path = f"subscriptions/{_path_part(name)}/ack"
        return int(self.request("POST", path, json={"seqs": list(seqs)})["acked"])

    def subscriptions(self) -> Any:
        return self.request("GET", "subscriptions")

    def unsubscribe(self, name: str) -> Any:
        return self.request("DELETE", f"subscriptions/{_path_part(name)}")

    def chirp_post(self, text: str) -> Any:
        return self.request("POST", "chirp/post", content=text.encode("utf-8"))

    def chirp_follow(self, node_id: str) -> list[str]:
        return list(self.request("POST", "chirp/follow", params={"node": node_id})["following"])

    def chirp_unfollow(self, node_id: str) -> Any:
        return self.request("POST", "chirp/unfollow", params={"node": node_id})

    def chirp_following(self) -> list[str]:
        return list(self.request("GET", "chirp/following")["following"])

    def chirp_timeline(self) -> list[dict[str, Any]]:
        """The timeline now, oldest first."""
        return list(self.request("GET", "chirp/timeline"))

    def chirp_watch(self) -> Generator[dict[str, Any], None, None]:
        """Yield each post of the timeline, then each new one as it comes."""
        with contextlib.closing(self._events("chirp/timeline", {"follow": "1"})) as events:
            yield from _data_of(events, "post")


def _path_part(text: str) -> str:
    """``text`` as one segment of a URL path (dots too, so ``..`` is a name, not a step
    up)."""
    return urllib.parse.quote(text, safe="").replace(".", "%2E")


def _data_of(
    events: Generator[dict[str, str], None, None], kind: str
) -> Generator[dict[str, Any], None, None]:
    """The data of each event of ``kind``, until an ``end`` event (which may say why)."""
    for event in events:
        if event.get("event") == kind:
            yield json.loads(event["data"])
        elif event.get("event") == "end":
            error = json.loads(event.get("data") or "{}").get("error")
            if error:
                raise NodeError(error)
            return
