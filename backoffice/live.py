"""Synchronous helpers behind the live WebSocket feeds: access, snapshots and replay.

The consumers in ``backoffice.consumers`` stay thin: they call these through
``database_sync_to_async`` (never touching the database from the event loop) and only
forward what comes back.

Feeds and what a client holds for each:

- ``console`` (``ws/pipelines/``): the newest pipelines the user may see, with jobs.
- ``pipeline`` (``ws/pipelines/<uuid>/``): one whole DAG (jobs and edges).
- ``year`` (``ws/years/<year>/``): per module and kind of that year, the active
  pipeline and the latest finished one, with their jobs (Data management rows).

Every snapshot is read in one REPEATABLE READ transaction together with the global
``seq`` it is current to, so "snapshot, then every live event with a larger seq" is
exact: no event is applied twice, none is missed.

Over ~400 lines: the three feeds share the access re-check, the snapshot transaction
and the replay; one file keeps that exactness argument in one place.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs

from channels.layers import get_channel_layer
from django.db import connection, transaction
from django.utils import translation
from redis.exceptions import TimeoutError as RedisTimeoutError

from backoffice import access, labels
from pipelines import events, messages, publish, selectors
from pipelines.models import DONE_STATUSES, EventCounter, JobEvent, Pipeline

logger = logging.getLogger(__name__)

Feed = Literal["console", "pipeline", "year"]

# Close codes (4000-4999 are the application's range). The browser module stops
# reconnecting on these: retrying cannot help until the user logs in or gets access.
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
PERMANENT_CLOSE_CODES = frozenset({CLOSE_UNAUTHENTICATED, CLOSE_FORBIDDEN, CLOSE_NOT_FOUND})

# A replay longer than this is replaced by a snapshot: cheaper for both sides than
# streaming tens of thousands of superseded progress events.
REPLAY_MAX_EVENTS = 5000
REPLAY_PAGE = 1000
# The console holds this many newest pipelines (plus every active one).
CONSOLE_PIPELINES = 50
# Jobs per pipeline in console/year snapshots; the DAG feed always sends all of them.
SNAPSHOT_JOBS_PER_PIPELINE = 500


@dataclass(frozen=True)
class Access:
    """What one socket may receive, decided on connect and re-checked every few seconds."""

    allowed: bool
    close_code: int = 0
    # None: unrestricted; otherwise only events of pipelines of these modules.
    modules: frozenset[str] | None = None
    groups: tuple[str, ...] = ()


def resolve_access(user: Any, *, feed: Feed, pipeline_id: str | None = None, year: int | None = None) -> Access:
    """Authenticate and authorise a socket for one feed, and name the groups it joins."""
    if not user or not user.is_authenticated:
        return Access(False, CLOSE_UNAUTHENTICATED)
    if not access.can_view(user):
        return Access(False, CLOSE_FORBIDDEN)
    modules = access.granted_modules(user)
    if feed == "console":
        return Access(True, modules=modules, groups=(publish.CONSOLE_GROUP,))
    if feed == "year":
        assert year is not None
        return Access(True, modules=modules, groups=(publish.year_group(year),))
    assert pipeline_id is not None
    module = Pipeline.objects.filter(pk=pipeline_id).values_list("module", flat=True).first()
    if module is None:
        return Access(False, CLOSE_NOT_FOUND)
    # Answer "not found" rather than "forbidden" for a foreign module's pipeline: the
    # socket must not learn that the id exists.
    if not access.can_see_module(user, module):
        return Access(False, CLOSE_NOT_FOUND)
    return Access(True, modules=modules, groups=(publish.pipeline_group(str(pipeline_id)),))


# Sockets of one user on one feed share a re-check for this long (a console with many
# tabs, a bench with 200 sockets): one query per user and feed, not per socket.
RECHECK_CACHE_SECONDS = 1.0
_rechecks: dict[tuple[Any, ...], tuple[float, Access]] = {}


def cached_access(user: Any, *, feed: Feed, pipeline_id: str | None = None, year: int | None = None) -> Access | None:
    """The answer :func:`recheck_access` gave for this user and feed less than
    ``RECHECK_CACHE_SECONDS`` ago, else ``None``. No database: callable from the event loop."""
    cached = _rechecks.get((getattr(user, "pk", None), feed, pipeline_id, year))
    if cached is not None and time.monotonic() - cached[0] < RECHECK_CACHE_SECONDS:
        return cached[1]
    return None


def recheck_access(user: Any, *, feed: Feed, pipeline_id: str | None = None, year: int | None = None) -> Access:
    """:func:`resolve_access` for the user *as stored now* (deactivated, roles or grants changed).

    The socket's user object was loaded at connect and caches its permissions; it is
    re-read so a revocation is seen.
    """
    cached = cached_access(user, feed=feed, pipeline_id=pipeline_id, year=year)
    if cached is not None:
        return cached
    key = (getattr(user, "pk", None), feed, pipeline_id, year)
    now = time.monotonic()
    result = resolve_access(access.reload(user), feed=feed, pipeline_id=pipeline_id, year=year)
    if len(_rechecks) > 10_000:
        _rechecks.clear()
    _rechecks[key] = (now, result)
    return result


def visible(modules: frozenset[str] | None, message: dict[str, Any]) -> bool:
    """May a socket of scope ``modules`` see this event? Module-less pipelines: "every module" only."""
    return access.in_scope(modules, (message.get("pipeline") or {}).get("module"))


# --- language ---------------------------------------------------------------------------
# Every event is published once, in English (``status_message``) with the message's key
# and parameters; each socket re-renders the messages in its reader's language, the one
# the admin pages use (language cookie set by the admin's selector, else Accept-Language).
# Rendering server-side keeps one catalogue and one number format for the page and its
# live updates; sockets of one language share the work through this cache.
_LOCALIZED_MAX = 2048
_localized: dict[tuple[int, str, int, str], str] = {}


def socket_language(scope: dict[str, Any]) -> str:
    """``?lang=`` (the page's own language, sent by live.js), else as Django picks a request's."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    asked = (query.get("lang") or [""])[0]
    if asked:
        try:
            return translation.get_supported_language_variant(asked)
        except LookupError:
            pass
    headers = dict(scope.get("headers") or [])
    request = SimpleNamespace(
        COOKIES=scope.get("cookies") or {},
        META={"HTTP_ACCEPT_LANGUAGE": headers.get(b"accept-language", b"").decode("latin-1")},
    )
    return translation.get_language_from_request(request)  # type: ignore[arg-type]


def localized_text(event: dict[str, Any], text: str, language: str) -> str:
    """The event as sent to a reader of ``language`` (``text`` is its stored JSON)."""
    if not _has_words(event):
        return text
    # The pipeline id too: seq restarts after a database reset, a cached text must not.
    key = (int(event.get("seq") or 0), str(event.get("pipeline_id")), int(event.get("pipeline_seq") or 0), language)
    found = _localized.get(key)
    if found is None:
        found = json.dumps(localized(event, language), separators=(",", ":"))
        if len(_localized) >= _LOCALIZED_MAX:
            _localized.clear()
        _localized[key] = found
    return found


def localized(data: Any, language: str) -> Any:
    """Job messages and phases of ``data`` in ``language`` (a copy). English readers get the
    phases as words too ("fetch" reads "fetching units"), as the server-rendered page shows them."""
    return messages.localize(data, language, also=labels.localize_phases)


def _has_words(event: dict[str, Any]) -> bool:
    """Does the event carry anything to render (a message key or a phase)?"""
    job, pipeline = event.get("job") or {}, event.get("pipeline") or {}
    return bool(job.get("status_key") or (job.get("progress") or {}).get("phase")
                or (pipeline.get("progress") or {}).get("phase"))


def read_localized(read: Callable[..., Any], language: str, **kwargs: Any) -> Any:
    """``read(**kwargs)`` (a snapshot, a replay) in ``language``, in the caller's thread."""
    return localized(read(**kwargs), language)


# --- snapshots ------------------------------------------------------------------------


def _repeatable_read() -> None:
    """Make the current (just opened) transaction one consistent view of the database.

    Must be the transaction's first statement. Without it a snapshot's pipelines, jobs
    and seq come from different instants and a live event could be applied on top of
    state that already includes it, or skip one.
    """
    with connection.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")


def _current_seq() -> int:
    value = EventCounter.objects.filter(pk=1).values_list("value", flat=True).first()
    return int(value) if value is not None else selectors.last_seq()


def _pipeline_entry(pipeline: Pipeline) -> dict[str, Any]:
    return {**events.pipeline_dict(pipeline), "pipeline_seq": pipeline.last_pipeline_seq}


def _jobs_of(pipeline_ids: Iterable[Any], *, per_pipeline: int | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    counts: dict[Any, int] = {}
    for job in selectors.slim_jobs().filter(pipeline_id__in=list(pipeline_ids)).order_by("pipeline_id", "id"):
        n = counts.get(job.pipeline_id, 0)
        if per_pipeline is not None and n >= per_pipeline:
            continue
        counts[job.pipeline_id] = n + 1
        out.append({**events.job_dict(job), "pipeline_id": str(job.pipeline_id)})
    return out


def console_snapshot(*, modules: frozenset[str] | None) -> dict[str, Any]:
    with transaction.atomic():
        _repeatable_read()
        seq = _current_seq()
        qs = access.narrow(Pipeline.objects.all(), modules)
        newest = list(qs.order_by("-created_at", "-id")[:CONSOLE_PIPELINES])
        seen = {p.pk for p in newest}
        active = [p for p in qs.exclude(status__in=DONE_STATUSES).order_by("-created_at") if p.pk not in seen]
        pipelines = newest + active
        jobs = _jobs_of([p.pk for p in pipelines], per_pipeline=SNAPSHOT_JOBS_PER_PIPELINE)
    return {
        "type": "snapshot",
        "feed": "console",
        "seq": seq,
        "pipelines": [_pipeline_entry(p) for p in pipelines],
        "jobs": jobs,
    }


def pipeline_snapshot(*, pipeline_id: str) -> dict[str, Any]:
    with transaction.atomic():
        _repeatable_read()
        seq = _current_seq()
        dag = selectors.pipeline_snapshot(pipeline_id=pipeline_id)
    pipeline = {**dag["pipeline"], "pipeline_seq": dag["pipeline_seq"]}
    return {
        "type": "snapshot",
        "feed": "pipeline",
        "seq": seq,
        "pipelines": [pipeline],
        "jobs": [{**j, "pipeline_id": pipeline["id"]} for j in dag["jobs"]],
        "edges": dag["edges"],
    }


def year_snapshot(*, year: int, modules: frozenset[str] | None) -> dict[str, Any]:
    """Per (module, kind) of the year: the active pipeline and the latest finished one."""
    with transaction.atomic():
        _repeatable_read()
        seq = _current_seq()
        qs = access.narrow(Pipeline.objects.filter(year=year), modules)
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        chosen: dict[Any, Pipeline] = {}
        for p in qs.order_by("-created_at", "-id"):
            empty = {"module": p.module, "kind": p.kind, "active": None, "latest": None}
            row = rows.setdefault((p.module, p.kind), empty)
            slot = "latest" if p.is_done else "active"
            if row[slot] is None:
                row[slot] = str(p.pk)
                chosen[p.pk] = p
        jobs = _jobs_of(chosen.keys(), per_pipeline=SNAPSHOT_JOBS_PER_PIPELINE)
    return {
        "type": "snapshot",
        "feed": "year",
        "year": year,
        "seq": seq,
        "rows": sorted(rows.values(), key=lambda r: (r["module"], r["kind"])),
        "pipelines": [_pipeline_entry(p) for p in chosen.values()],
        "jobs": jobs,
    }


def snapshot(
    *, feed: Feed, modules: frozenset[str] | None, pipeline_id: str | None = None, year: int | None = None
) -> dict[str, Any]:
    if feed == "pipeline":
        assert pipeline_id is not None
        return pipeline_snapshot(pipeline_id=pipeline_id)
    if feed == "year":
        assert year is not None
        return year_snapshot(year=year, modules=modules)
    return console_snapshot(modules=modules)


# --- replay ---------------------------------------------------------------------------


def replay(
    *,
    after: int,
    feed: Feed,
    modules: frozenset[str] | None,
    pipeline_id: str | None = None,
    year: int | None = None,
) -> list[dict[str, Any]] | None:
    """Every event of the feed with ``seq > after`` in seq order, or ``None`` for "resync".

    ``None`` when the client is too far behind (a snapshot is cheaper), claims a seq
    from the future (the database was reset), or asks for events already purged by
    retention (they can no longer be replayed).
    """
    if after < 0 or after > _current_seq():
        return None
    oldest = JobEvent.objects.order_by("seq").values_list("seq", flat=True).first()
    if oldest is not None and after < oldest - 1:
        return None
    out: list[dict[str, Any]] = []
    cursor = after
    while True:
        page = selectors.events_after(
            after_seq=cursor,
            pipeline_id=pipeline_id if feed == "pipeline" else None,
            year=year if feed == "year" else None,
            base=access.narrow(JobEvent.objects.all(), modules),
            limit=REPLAY_PAGE,
        )
        out.extend(page)
        if len(out) > REPLAY_MAX_EVENTS:
            return None
        if len(page) < REPLAY_PAGE:
            return out
        cursor = int(page[-1]["seq"])


# --- process-local fan-out ------------------------------------------------------------

# redis-py's default socket timeout (``redis.connection.DEFAULT_SOCKET_TIMEOUT``).
REDIS_SOCKET_TIMEOUT = 5.0


class Subscriber(Protocol):
    def deliver(self, event: dict[str, Any], text: str) -> None: ...


class Hub:
    """One channel-layer channel per process for every live socket of that process.

    Why not a channel per socket (the Channels default): channels-redis then wakes
    each socket's receive task through a shared lock and a buffer per channel, and
    every socket re-encodes the event; at 200 sockets that cost ~0.3 ms per socket per
    event, so the last socket heard of a commit ~60 ms late. Here the process joins
    each group once, receives each event once, encodes it once and hands it to the
    local sockets of that group (each socket still decides what its user may see).

    Membership is reference-counted per group; the publisher tags each copy with the
    group it was sent to (``"group"``), which is stripped before it reaches a browser.
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        # channels-redis blocks 5 s in BZPOPMIN and redis-py 8 times reads out after
        # 5 s by default: the two race on every idle poll. Poll for less.
        if getattr(layer, "brpop_timeout", 0) >= REDIS_SOCKET_TIMEOUT:
            layer.brpop_timeout = REDIS_SOCKET_TIMEOUT / 2
        self.channel: str | None = None
        self.members: dict[str, set[Subscriber]] = {}
        self.pump: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()

    async def join(self, group: str, subscriber: Subscriber) -> None:
        async with self.lock:
            if self.channel is None:
                self.channel = await self.layer.new_channel()
                self.pump = asyncio.create_task(self._pump(self.channel))
            if group not in self.members:
                await self.layer.group_add(group, self.channel)
                self.members[group] = set()
            self.members[group].add(subscriber)

    async def refresh(self, group: str) -> None:
        """Re-add the process channel before the layer's ``group_expiry`` drops it."""
        if self.channel is not None and group in self.members:
            await self.layer.group_add(group, self.channel)

    async def leave(self, group: str, subscriber: Subscriber) -> None:
        async with self.lock:
            subscribers = self.members.get(group)
            if subscribers is None:
                return
            subscribers.discard(subscriber)
            if not subscribers and self.channel is not None:
                del self.members[group]
                await self.layer.group_discard(group, self.channel)
            # The channel and its pump stay for the process's life: cancelling a
            # receive in flight on channels-redis lost the next channel's messages.

    async def _pump(self, channel: str) -> None:
        while True:
            try:
                tagged = await self.layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A cancel during a Redis read can surface as a Redis error: honour it,
                # or the loop could never shut down.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                if isinstance(exc, RedisTimeoutError):
                    continue  # an idle BZPOPMIN that outlived the socket timeout: poll again
                # Redis restarting: keep the pump alive; sockets see the gap and resync.
                logger.exception("live hub receive failed")
                await asyncio.sleep(0.5)
                continue
            group = tagged.get("group")
            subscribers = self.members.get(group or "")
            if not subscribers:
                continue
            # The publisher sends one batch per group per transaction (seq order).
            batch = tagged["events"] if tagged.get("type") == "events.batch" else [tagged]
            for raw in batch:
                event = {k: v for k, v in raw.items() if k != "group"}
                text = json.dumps(event, separators=(",", ":"))
                for subscriber in list(subscribers):
                    try:
                        subscriber.deliver(event, text)
                    except Exception:
                        logger.exception("live delivery failed")


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub] = weakref.WeakKeyDictionary()


def hub() -> Hub:
    """The hub of the running event loop (one per server process; one per test loop)."""
    loop = asyncio.get_running_loop()
    layer = get_channel_layer()
    current = _hubs.get(loop)
    if current is None or current.layer is not layer:
        current = _hubs[loop] = Hub(layer)
    return current


async def close_hub() -> None:
    """Stop the running loop's hub (tests end a loop per test; servers at shutdown)."""
    current = _hubs.pop(asyncio.get_running_loop(), None)
    if current is not None and current.pump is not None:
        current.pump.cancel()
        await asyncio.wait({current.pump}, timeout=5)
