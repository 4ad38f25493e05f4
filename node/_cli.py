"""The ``ptth`` command line.

Every command takes ``--data-dir`` (default ``$PTTH_DATA_DIR``, else the per-user data
directory). Errors are one line on stderr and a non-zero exit status: 1 for a failure,
2 for a usage mistake, 130 after Ctrl-C. No tracebacks.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import json
import logging
import math
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, TextIO

import trio

import crypto
from node._apiclient import ApiClient
from node._attach import RelayMode
from node._datadir import DataDir, default_data_dir
from node._errors import NodeError, NotRunning
from node._node import Node, NodeConfig
from node._relay import RelayConfig

__all__ = ["main"]

log = logging.getLogger("ptth.cli")

DEFAULT_ADDRESS_LIFETIME: Final = "30d"
_DURATION: Final = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class UsageError(Exception):
    """A mistake in how the command was called: exit status 2."""


def parse_duration(text: str) -> int:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"45s"`` or ``"1h30m"`` -> seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(f"{n}{u}" for n, u in parts) != text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration like 45s, 90m, 12h, 30d or 1h30m"
        )
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be positive")
    return seconds


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _ttl(text: str) -> float:
    """A publication's lifetime: seconds (``300``) or a duration (``90m``, ``1h30m``)."""
    try:
        return _positive_seconds(text)
    except argparse.ArgumentTypeError:
        try:
            return float(parse_duration(text))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a positive number of seconds or a duration like 90m or 12h"
            ) from None


def _now_ms() -> int:
    return int(time.time() * 1000)


def _read_token_argument(argument: str, stdin: TextIO) -> str:
    if argument == "-":
        return stdin.read()
    if argument.startswith("@"):
        path = Path(argument[1:])
        try:
            return path.read_text(encoding="utf-8")
        except OSError as exc:
            raise NodeError(f"cannot read token file {path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise NodeError(f"token file {path} is not text") from exc
    return argument


def _read_body_argument(argument: str, stdin: TextIO) -> bytes:
    if argument == "-":
        return stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read().encode("utf-8")
    if argument.startswith("@"):
        path = Path(argument[1:])
        try:
            return path.read_bytes()
        except OSError as exc:
            raise NodeError(f"cannot read message file {path}: {exc.strerror}") from exc
    return argument.encode("utf-8")


def _format_time(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def _post_line(post: dict[str, Any]) -> str:
    """``2026-12-02 03:04:05 <author's short id>: text`` (the time is UTC)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(post["ts"] / 1000))
    return f"{stamp} {post['author'][:10]}: {post['text']}"


def _publication_line(publication: dict[str, Any]) -> str:
    if "body" in publication:
        text = publication["body"]
    else:
        size = len(base64.b64decode(publication["body_b64"]))
        text = f"[{size} bytes of {publication['ct'] or 'binary'}]"
    return f"{publication['topic']} {publication['origin'][:10]}: {text}"


class Cli:
    """The commands, with their output streams (so tests can call them directly)."""

    def __init__(
        self, args: argparse.Namespace, *, out: TextIO, err: TextIO, stdin: TextIO
    ) -> None:
        self.args = args
        self.out = out
        self.err = err
        self.stdin = stdin
        self.data = DataDir(getattr(args, "data_dir", None) or default_data_dir())

    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def cmd_init(self) -> None:
        identity, created = self.data.init()
        if created:
            print(f"created identity in {self.data.path}", file=self.err)
        self.say(identity.node_id.text)

    def cmd_id(self) -> None:
        self.say(self.data.identity().node_id.text)

    def cmd_address(self) -> None:
        identity = self.data.identity()
        if self.args.endpoint:
            exp = _now_ms() + self.args.expires_in * 1000
            signed = self.data.sign_address(
                identity, self.args.endpoint, exp=exp, name=self.args.name
            )
            self.say(signed.token)
            return
        if self.args.name is not None:
            raise UsageError("--name needs --endpoint (it is part of a new address record)")
        address = self._running_address() or self.data.own_address()
        if address is None:
            raise NodeError(
                "this node has no address yet: sign one with 'ptth address --endpoint URL'"
            )
        if address.record.exp <= _now_ms():
            raise NodeError(
                f"this node's address (seq {address.record.seq}) expired at "
                f"{_format_time(address.record.exp)}: sign a new one with --endpoint"
            )
        self.say(address.token)

    def _running_address(self) -> crypto.SignedAddress | None:
        try:
            with ApiClient(self.data.path) as api:
                token = api.status()["address"]
        except NotRunning:
            return None
        return crypto.parse_token(token, now=_now_ms())

    def cmd_run(self) -> None:
        relays = tuple(_read_token_argument(token, self.stdin).strip() for token in self.args.relay)
        config = NodeConfig(
            listen=self.args.listen,
            public_url=self.args.public_url,
            name=self.args.name,
            relays=relays,
            relay_mode=self.args.relay_mode,
            relay=RelayConfig(policy=self.args.relay_policy),
            forward_policy=self.args.forward,
            announce_interval=float(self.args.announce_interval),
        )
        if self.args.public_url is not None:
            crypto.validate_endpoint(self.args.public_url)
        handler = logging.StreamHandler(self.err)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger = logging.getLogger("ptth")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if self.args.verbose else logging.INFO)
        try:
            trio.run(self._run_node, config)
        finally:
            logger.removeHandler(handler)

    async def _run_node(self, config: NodeConfig) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with Node.open(self.data.path, config=config) as node:
                self.say(f"node     {node.node_id.text}")
                for endpoint in node.endpoints:
                    self.say(f"endpoint {endpoint}")
                self.say(f"address  {node.address_token()}")
                self.out.flush()
                log.info("ptth node %s running; Ctrl-C to stop", node.node_id.short)
                async for signum in signals:
                    log.info("stopping (%s)", signal.Signals(signum).name)
                    break
        log.info("stopped")

    def cmd_send(self) -> None:
        body = _read_body_argument(self.args.message, self.stdin)
        if self.args.timeout is not None and not self.args.wait:
            raise UsageError("--timeout needs --wait")
        started = time.monotonic()
        with ApiClient(self.data.path, timeout=None) as api:
            answer = api.send(
                self.args.node_id,
                body,
                self.args.content_type,
                wait=self.args.wait,
                timeout=self.args.timeout,
            )
        where = "held: no route yet" if answer["held"] else f"next hop {answer['next_hop'][:10]}"
        self.say(f"id {answer['id']}  in custody, {where}")
        if not self.args.wait:
            return
        latency = time.monotonic() - started
        state = answer.get("state")
        if state == "delivered":
            self.say(
                f"delivered to {answer['to'][:10]} after {answer['hops']} hops"
                f" in {latency * 1000:.0f} ms"
            )
            return
        raise NodeError(answer.get("error") or f"not delivered ({state})")

    def cmd_publish(self) -> None:
        body = _read_body_argument(self.args.message, self.stdin)
        with ApiClient(self.data.path, timeout=None) as api:
            answer = api.publish(self.args.topic, body, self.args.content_type, self.args.ttl)
        self.say(answer["id"])
        hops = len(answer["next_hops"])
        where = [f"to {hops} neighbour{'s' if hops != 1 else ''}"] if hops else []
        if answer["delivered_here"]:
            where.append("to a subscription here")
        note = " and ".join(where) if where else "no subscriber known yet"
        print(f"in custody, {note}", file=self.err)

    def cmd_subscribe(self) -> None:
        name = self.args.name
        if not self.args.patterns and name is None:
            raise UsageError(
                "say what to subscribe to: one PATTERN or more (or --name NAME alone to "
                "resume a named subscription)"
            )
        try:
            with (
                ApiClient(self.data.path, timeout=None) as api,
                contextlib.closing(api.subscribe(self.args.patterns, name=name)) as publications,
            ):
                for publication in publications:
                    if self.args.json:
                        self.say(json.dumps(publication, separators=(",", ":")))
                    else:
                        self.say(_publication_line(publication))
                    self.out.flush()
                    if name is not None:
                        # Printed: done with it, the next run does not print it again.
                        api.ack_subscription(name, [publication["seq"]])
        except KeyboardInterrupt:
            # Ctrl-C is how a subscription ends: leaving unsubscribes (a named one
            # stays, and what comes for it waits for the next run).
            return

    def cmd_subscriptions(self) -> None:
        with ApiClient(self.data.path) as api:
            subscriptions = api.subscriptions()
        if self.args.json:
            self.say(json.dumps(subscriptions, indent=2))
            return
        if not subscriptions:
            print(
                "no named subscriptions (start one with 'ptth subscribe PATTERN --name NAME')",
                file=self.err,
            )
            return
        for sub in subscriptions:
            self.say(
                f"{sub['name']}  {' '.join(sub['patterns'])}  lease {sub['lease']:g} s  "
                f"since {_format_time(sub['created'])}"
            )

    def cmd_unsubscribe(self) -> None:
        with ApiClient(self.data.path) as api:
            api.unsubscribe(self.args.name)
        self.say(f"unsubscribed {self.args.name} (what was pending for it is dropped)")

    def cmd_chirp_post(self) -> None:
        body = _read_body_argument(self.args.text, self.stdin)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NodeError(f"a post is UTF-8 text; byte {exc.start} is not") from None
        if self.args.text == "-" or self.args.text.startswith("@"):
            text = text.removesuffix("\n")  # a file's or a pipe's last line break
        with ApiClient(self.data.path) as api:
            answer = api.chirp_post(text)
        self.say(answer["id"])
        hops = len(answer["next_hops"])
        note = f"to {hops} neighbour{'s' if hops != 1 else ''}" if hops else "no follower known yet"
        print(f"posted, {note}", file=self.err)

    def cmd_chirp_follow(self) -> None:
        with ApiClient(self.data.path) as api:
            following = api.chirp_follow(self.args.node_id)
        self.say(f"following {self.args.node_id} ({len(following)} followed)")

    def cmd_chirp_unfollow(self) -> None:
        with ApiClient(self.data.path) as api:
            answer = api.chirp_unfollow(self.args.node_id)
        if not answer["unfollowed"]:
            raise NodeError(
                f"this node does not follow {self.args.node_id} (see 'ptth chirp following')"
            )
        self.say(f"unfollowed {self.args.node_id} ({len(answer['following'])} followed)")

    def cmd_chirp_following(self) -> None:
        with ApiClient(self.data.path) as api:
            following = api.chirp_following()
        if not following:
            print("following nobody yet ('ptth chirp follow NODE_ID')", file=self.err)
        for node_id in following:
            self.say(node_id)

    def cmd_chirp_timeline(self) -> None:
        def show(post: dict[str, Any]) -> None:
            self.say(
                json.dumps(post, separators=(",", ":")) if self.args.json else _post_line(post)
            )
            self.out.flush()

        if not self.args.follow:
            with ApiClient(self.data.path) as api:
                for post in api.chirp_timeline():
                    show(post)
            return
        try:
            with (
                ApiClient(self.data.path, timeout=None) as api,
                contextlib.closing(api.chirp_watch()) as posts,
            ):
                for post in posts:
                    show(post)
        except KeyboardInterrupt:
            return  # Ctrl-C is how following the timeline ends

    def cmd_routes(self) -> None:
        with ApiClient(self.data.path) as api:
            routes = api.routes()
        if self.args.json:
            self.say(json.dumps(routes, indent=2))
            return
        if not routes:
            self.say("no routes yet (peer with a node, or wait for announces)")
            return
        self.say(f"{'destination':<54}{'next hop':<12}{'hops':>5}{'age':>9}")
        for route in routes:
            age = "direct" if route["age"] is None else f"{route['age']:.0f}s"
            self.say(
                f"{route['destination']:<54}{route['next_hop'][:10]:<12}{route['hops']:>5}{age:>9}"
            )

    def cmd_queues(self) -> None:
        with ApiClient(self.data.path) as api:
            queues = api.queues()
        if self.args.json:
            self.say(json.dumps(queues, indent=2))
            return
        if not queues:
            self.say("nothing queued, no neighbours")
            return
        self.say(
            f"{'next hop':<12}{'frames':>8}{'bytes':>10}{'oldest':>9}  {'link':<12}next attempt"
        )
        for queue in queues:
            hop = "(held)" if queue["next_hop"] is None else queue["next_hop"][:10]
            oldest = "-" if queue["oldest_age"] is None else f"{queue['oldest_age']:.0f}s"
            attempt = (
                "-" if queue["next_attempt_in"] is None else f"in {queue['next_attempt_in']:.1f}s"
            )
            problem = (
                f"  ({queue['last_error']})"
                if queue["link"] != "up" and queue["last_error"]
                else ""
            )
            self.say(
                f"{hop:<12}{queue['frames']:>8}{queue['bytes']:>10}{oldest:>9}  "
                f"{queue['link'] or '-':<12}{attempt}{problem}"
            )

    def cmd_trace(self) -> None:
        with ApiClient(self.data.path) as api:
            trace = api.trace(self.args.frame_id)
        if self.args.json:
            self.say(json.dumps(trace, indent=2))
            return
        self.say(f"frame {trace['id']} to {trace['to']}")
        self.say(f"  {_format_time(trace['created'])}  taken into custody here")
        if trace["state"] == "held":
            self.say("  held here: no route yet")
        elif trace["state"] == "queued":
            self.say(f"  queued here for {trace['next_hop'][:10]}")
        if trace["first_hop"]:
            self.say(
                f"  {_format_time(trace['first_accepted'])}  accepted by"
                f" {trace['first_hop'][:10]} (signed receipt)"
            )
        for receipt in trace["receipts"]:
            if receipt["state"] == "delivered" and receipt["by"] != trace["to"]:
                # Only the destination can deliver: the node keeps such a receipt, and
                # ignores it (the frame's state is not changed by it).
                self.say(
                    f"  {_format_time(receipt['at'])}  {receipt['by'][:10]} claims delivery,"
                    " but is not the destination: ignored"
                )
            elif receipt["state"] == "delivered":
                self.say(
                    f"  {_format_time(receipt['at'])}  delivered by {receipt['by'][:10]}"
                    f" after {receipt['hops']} hops"
                )
            else:
                self.say(
                    f"  {_format_time(receipt['at'])}  dropped at {receipt['by'][:10]}:"
                    f" {receipt['why']}"
                )
        if trace["state"] == "forwarded" and not trace["receipts"]:
            tail = "" if trace["receipt_asked"] else " (no delivery receipt was asked for)"
            self.say(f"  in the mesh; no receipt yet{tail}")

    def cmd_inbox(self) -> None:
        with ApiClient(self.data.path) as api:
            for message in api.inbox(follow=self.args.follow):
                if "body" in message:
                    text = message["body"]
                else:
                    size = len(base64.b64decode(message["body_b64"]))
                    text = f"[{size} bytes of {message['ct'] or 'binary'}]"
                stamp = _format_time(message["received"])
                self.say(f"{stamp}  from {message['src']}: {text}")
                self.out.flush()
                api.ack([f"{message['src']}:{message['id']}"])

    def cmd_status(self) -> None:
        with ApiClient(self.data.path) as api:
            status = api.status()
        if self.args.json:
            self.say(json.dumps(status, indent=2))
            return
        self.say(f"node      {status['node']}" + (f" ({status['name']})" if status["name"] else ""))
        for endpoint in status["endpoints"]:
            self.say(f"endpoint  {endpoint}")
        self.say(
            f"inbox     {status['inbox']['frames']} messages, {status['inbox']['bytes']} bytes"
        )
        queued = status["queued"]
        self.say(f"queued    {queued['frames']} frames, {queued['bytes']} bytes (ptth queues)")
        states = collections.Counter(link["state"] for link in status["neighbours"])
        summary = ", ".join(f"{count} {state}" for state, count in sorted(states.items()))
        self.say(
            f"links     {len(status['neighbours'])} neighbours"
            + (f" ({summary})" if summary else "")
        )
        self.say(f"routes    {status['routes']} destinations (ptth routes)")
        self.say(f"peers     {len(status['peers'])}")
        for peer in status["peers"]:
            state = " (expired)" if peer["expired"] else ""
            self.say(
                f"  {peer['node']}  {peer['name'] or '-'}  {' '.join(peer['endpoints'])}{state}"
            )
        for link in status["attachments"]:
            last = link["last_activity"]
            seen = f"last activity {_format_time(last)}" if last else "never attached"
            problem = f"; last error: {link['last_error']}" if link["last_error"] else ""
            self.say(
                f"relay     {link['relay'][:10]} {link['endpoint']}  mode {link['mode'] or '-'}  "
                f"{link['connections']} connections  lease {link['lease'] or '-'} s  "
                f"{seen}{problem}"
            )
        if status["relaying"]:
            self.say(f"relaying  for {len(status['relaying'])} nodes")
            for entry in status["relaying"]:
                mode = "long-poll" if entry["polling"] else f"{entry['connections']} connections"
                self.say(f"  {entry['node']}  {mode}  {entry['requests']} requests")
        counters = status["counters"]
        self.say(
            "received  {frames_accepted} accepted, {frames_duplicate} duplicate, "
            "{frames_rejected} rejected, {requests_refused} requests refused".format(**counters)
        )
        self.say(
            "sent      {sent_accepted} accepted, {sent_duplicate} duplicate, "
            "{sent_rejected} rejected, {send_failures} failed, {send_retries} retries".format(
                **counters
            )
        )

    def cmd_peer_add(self) -> None:
        identity = self.data.identity()
        text = _read_token_argument(self.args.token, self.stdin)
        address = crypto.parse_token(text, now=_now_ms())
        if address.node == identity.node_id:
            raise NodeError("that token is this node's own address; add another node's token")
        try:
            added = self.data.peers.add(address, now=_now_ms())
        except crypto.Stale as exc:
            raise NodeError(f"not added: {exc}") from exc
        # A running node makes it a neighbour and greets it at once (else within its
        # next tick, when it rescans the peers).
        with contextlib.suppress(NotRunning), ApiClient(self.data.path) as api:
            api.add_peer(address.token)
        record = address.record
        label = f" ({record.name})" if record.name else ""
        verb = "added" if added else "already up to date:"
        self.say(f"{verb} peer {record.node.text}{label} seq {record.seq}")

    def cmd_peer_list(self) -> None:
        now = _now_ms()
        for address in self.data.peers:
            record = address.record
            state = "expired" if record.exp <= now else f"until {_format_time(record.exp)}"
            name = record.name or "-"
            endpoints = " ".join(record.endpoints)
            self.say(f"{record.node.text}  {name}  seq {record.seq}  {state}  {endpoints}")

    def cmd_peer_remove(self) -> None:
        node = crypto.NodeId.parse(self.args.node_id)
        self.data.peers.remove(node)
        self.say(f"removed peer {node.text}")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every command."""
    # --data-dir is accepted before and after the command; the copy on the commands
    # must not default, or it would overwrite a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="the node's data directory (default: $PTTH_DATA_DIR, else a per-user directory)",
    )
    parser = argparse.ArgumentParser(
        prog="ptth",
        description="ptth: a peer-to-peer relay mesh of signed messages over HTTP.",
        parents=[common],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Callable[[Cli], None], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    command("init", Cli.cmd_init, "create this node's identity if absent; print its node id")
    command("id", Cli.cmd_id, "print this node's id")
    address = command(
        "address",
        Cli.cmd_address,
        "sign a new address record with --endpoint, or print the current address token",
    )
    address.add_argument(
        "--endpoint",
        action="append",
        metavar="URL",
        help="an http(s) URL where this node can be reached (repeatable)",
    )
    address.add_argument("--name", help="a display name to put in the record")
    address.add_argument(
        "--expires-in",
        type=parse_duration,
        default=parse_duration(DEFAULT_ADDRESS_LIFETIME),
        metavar="DURATION",
        help=f"how long the record is valid (default {DEFAULT_ADDRESS_LIFETIME})",
    )

    run = command(
        "run", Cli.cmd_run, "run a node in the foreground (creates its identity if absent)"
    )
    run.add_argument(
        "--listen",
        default=NodeConfig.listen,
        metavar="HOST:PORT",
        help="where to accept HTTP (default %(default)s; port 0 picks a free port)",
    )
    run.add_argument(
        "--public-url",
        metavar="URL",
        help="the URL other nodes reach this one at (default: http://HOST:PORT of --listen)",
    )
    run.add_argument("--name", help="a display name for this node's address record")
    run.add_argument(
        "--relay",
        action="append",
        default=[],
        metavar="TOKEN",
        help="stay reachable through this relay (its address token, or @FILE); repeatable",
    )
    run.add_argument(
        "--relay-mode",
        choices=[m.value for m in RelayMode],
        default=RelayMode.AUTO.value,
        help="attach with PTTH Upgrade, long-poll, or auto (Upgrade, else long-poll)",
    )
    run.add_argument(
        "--relay-policy",
        choices=["open", "peers", "off"],
        default="open",
        help="who may attach to this node as their relay (default %(default)s)",
    )
    run.add_argument(
        "--forward",
        choices=["neighbours", "open", "off"],
        default=NodeConfig.forward_policy,
        help="whose frames this node forwards: its neighbours (peers, relays, nodes "
        "attached to it), anyone, or nobody (default %(default)s)",
    )
    run.add_argument(
        "--announce-interval",
        type=parse_duration,
        default=int(NodeConfig.announce_interval),
        metavar="DURATION",
        help="how often this node announces itself to the mesh (default 10m)",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log every request")

    send = command(
        "send",
        Cli.cmd_send,
        "send a message to any node of the mesh; returns once it is in durable custody",
    )
    send.add_argument("node_id", metavar="NODE_ID")
    send.add_argument("message", metavar="TEXT|@FILE|-", help="the message, @FILE, or - for stdin")
    send.add_argument("--content-type", "--ct", dest="content_type", metavar="TYPE")
    send.add_argument(
        "--wait", action="store_true", help="wait for the delivery receipt (exit 1 if dropped)"
    )
    send.add_argument(
        "--timeout",
        type=_positive_seconds,
        metavar="S",
        help="with --wait: give up after S seconds (exit 1; the frame stays in the mesh)",
    )

    publish = command(
        "publish",
        Cli.cmd_publish,
        "publish a message to a topic, for every node subscribed to a matching pattern; "
        "returns once it is in durable custody and prints its frame id",
    )
    publish.add_argument(
        "topic",
        metavar="TOPIC",
        help="dot-separated words, e.g. news.tech (no wildcards); ~<your node id>.x is "
        "a secure name only this node may publish under",
    )
    publish.add_argument(
        "message", metavar="TEXT|@FILE|-", help="the message, @FILE, or - for stdin"
    )
    publish.add_argument(
        "--content-type", "--ct", dest="content_type", metavar="TYPE", help="e.g. text/plain"
    )
    publish.add_argument(
        "--ttl",
        type=_ttl,
        metavar="DURATION",
        help="how long the mesh keeps it for subscribers not reached yet: seconds, or "
        "like 90m or 12h (default: the node's frame lifetime)",
    )
    subscribe = command(
        "subscribe",
        Cli.cmd_subscribe,
        "print each publication whose topic matches a pattern, one line each, until Ctrl-C; "
        "with --name, a durable subscription: what came meanwhile is printed first",
    )
    subscribe.add_argument(
        "patterns",
        nargs="*",
        metavar="PATTERN",
        help="a topic pattern: dot-separated words, '*' for one word, '#' for zero or more "
        "(e.g. news.# or *.alerts); with --name, none means the patterns it has",
    )
    subscribe.add_argument(
        "--name",
        metavar="NAME",
        help="a durable subscription (1..64 of A-Z a-z 0-9 _ . -): it stays after Ctrl-C "
        "and a restart, and what it matches waits for the next run; each publication is "
        "acknowledged once printed (end it with 'ptth unsubscribe NAME')",
    )
    subscribe.add_argument(
        "--json", action="store_true", help="print each publication as a JSON object"
    )
    subscriptions = command(
        "subscriptions", Cli.cmd_subscriptions, "list this node's named (durable) subscriptions"
    )
    subscriptions.add_argument("--json", action="store_true", help="print the raw JSON")
    unsubscribe = command(
        "unsubscribe",
        Cli.cmd_unsubscribe,
        "end a named subscription: withdrawn from the mesh, what was pending for it dropped",
    )
    unsubscribe.add_argument("name", metavar="NAME")

    routes = command("routes", Cli.cmd_routes, "show the routes the running node holds")
    routes.add_argument("--json", action="store_true", help="print the raw JSON")
    queues = command("queues", Cli.cmd_queues, "show what the running node holds for each next hop")
    queues.add_argument("--json", action="store_true", help="print the raw JSON")
    trace = command("trace", Cli.cmd_trace, "show where a frame this node sent is known to be")
    trace.add_argument("frame_id", metavar="FRAME_ID", help="the id 'ptth send' printed")
    trace.add_argument("--json", action="store_true", help="print the raw JSON")

    inbox = command("inbox", Cli.cmd_inbox, "print received messages (and acknowledge them)")
    inbox.add_argument("-f", "--follow", action="store_true", help="keep waiting for more")

    status = command("status", Cli.cmd_status, "show the running node's state")
    status.add_argument("--json", action="store_true", help="print the raw JSON")

    peer = commands.add_parser("peer", help="manage the peers this node knows", parents=[common])
    peer_commands = peer.add_subparsers(dest="peer_command", required=True, metavar="COMMAND")

    def peer_command(
        name: str, handler: Callable[[Cli], None], help: str
    ) -> argparse.ArgumentParser:
        sub = peer_commands.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    add = peer_command("add", Cli.cmd_peer_add, "verify and store a peer's address token")
    add.add_argument("token", metavar="TOKEN", help="the token, @FILE to read it, - for stdin")
    peer_command("list", Cli.cmd_peer_list, "list known peers")
    remove = peer_command("remove", Cli.cmd_peer_remove, "forget a peer")
    remove.add_argument("node_id", metavar="NODE_ID")

    chirp = commands.add_parser(
        "chirp",
        help="a toy Twitter over publish/subscribe: post, follow, read the timeline",
        description="a toy Twitter over publish/subscribe: a post goes to the nodes that "
        "follow this one; the timeline holds the posts of the nodes this one follows",
        parents=[common],
    )
    chirp_commands = chirp.add_subparsers(dest="chirp_command", required=True, metavar="COMMAND")

    def chirp_command(
        name: str, handler: Callable[[Cli], None], help: str
    ) -> argparse.ArgumentParser:
        sub = chirp_commands.add_parser(name, help=help, description=help, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    post = chirp_command(
        "post", Cli.cmd_chirp_post, "post to this node's followers; prints the post's id"
    )
    post.add_argument("text", metavar="TEXT|@FILE|-", help="the post, @FILE, or - for stdin")
    follow = chirp_command(
        "follow", Cli.cmd_chirp_follow, "follow a node: its posts come to the timeline"
    )
    follow.add_argument("node_id", metavar="NODE_ID")
    unfollow = chirp_command("unfollow", Cli.cmd_chirp_unfollow, "stop following a node")
    unfollow.add_argument("node_id", metavar="NODE_ID")
    chirp_command("following", Cli.cmd_chirp_following, "list the nodes followed, one a line")
    timeline = chirp_command(
        "timeline",
        Cli.cmd_chirp_timeline,
        "print the posts of the nodes followed, oldest first: time (UTC), author, text",
    )
    timeline.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then print new posts as they come, until Ctrl-C",
    )
    timeline.add_argument("--json", action="store_true", help="print each post as a JSON object")
    return parser


def run(
    argv: Sequence[str],
    *,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
    stdin: TextIO = sys.stdin,
) -> int:
    """Run the CLI with ``argv`` (without the program name); return the exit status."""
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed usage or help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        args.handler(Cli(args, out=out, err=err, stdin=stdin))
    except UsageError as exc:
        print(f"ptth: usage: {exc}", file=err)
        return 2
    except (NodeError, crypto.CryptoError) as exc:
        print(f"ptth: error: {exc}", file=err)
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"ptth: error: {exc.strerror or exc}{where}", file=err)
        return 1
    except KeyboardInterrupt:
        print("ptth: interrupted", file=err)
        return 130
    return 0


def main() -> None:
    """Console entry point."""
    sys.exit(run(sys.argv[1:]))
