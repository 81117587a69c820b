"""A load generator for the dev cluster's local edge servers: real Open Inference v2 requests
at a bounded rate, for a bounded time and count, to loopback addresses only (the local pods'
own, status.podIP). It stops by itself. The tests and the demo use it to give a rollout's
analysis real traffic to measure; it lives beside the node agent because it only ever talks
to the servers that agent runs.

urllib3 (already installed with the Kubernetes client) keeps one connection pool per server;
one thread per route paces its requests on a fixed schedule (request i at start + i/rate), so
a slow server gets fewer answers per second but never more requests than the rate allows. A
route is one server by default; routed per site, it is a site's servers taking the requests in
turn, as a Service spreads them over its Ready endpoints."""

from __future__ import annotations

import ipaddress
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import urllib3

MAX_SECONDS = 600.0  # a run never goes on longer than this, whatever it was asked
MAX_RATE = 1000.0  # requests per second per server
REQUEST_TIMEOUT = urllib3.Timeout(connect=2.0, read=10.0)


def loopback_target(url: str) -> str:
    """`http://<loopback address>:<port>` or a ValueError naming what is wrong: the generator
    never sends to anything beyond this machine."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise ValueError(f"target {url!r}: give http://ADDRESS:PORT (a local pod's endpoint)")
    try:
        address = ipaddress.ip_address(parts.hostname)
    except ValueError:
        raise ValueError(f"target {url!r}: give an IP address, not a name") from None
    if not address.is_loopback:
        raise ValueError(f"target {url!r}: only loopback addresses are loaded")
    return f"http://{parts.hostname}:{parts.port}"


@dataclass(frozen=True)
class Route:
    """Where one paced stream of requests goes: a name (a site) and the targets that serve it
    now, which take its requests in turn. A route with no target cannot be served: its due
    requests are counted as unrouted, not sent."""

    name: str
    targets: tuple[str, ...]


@dataclass(frozen=True)
class LoadPlan:
    """What to send: `rate` requests per second to each route for `seconds`, at most
    `max_requests` to each; the rows are sent in turn, one row a request. Without `routes`
    each target is a route of its own; with them, the targets are the routes' together."""

    targets: tuple[str, ...]
    model: str
    rows: tuple[tuple[float, ...], ...]
    input_name: str = "input"
    rate: float = 20.0
    seconds: float = 10.0
    max_requests: int = 10_000
    routes: tuple[Route, ...] = ()

    @classmethod
    def by_route(
        cls,
        routes: Mapping[str, Sequence[str]],
        model: str,
        rows: tuple[tuple[float, ...], ...],
        **settings: Any,
    ) -> LoadPlan:
        """A plan with one route per name (a site) to its targets; `settings` as LoadPlan's."""
        routed = tuple(Route(name, tuple(dict.fromkeys(t))) for name, t in routes.items())
        targets = tuple(target for route in routed for target in route.targets)
        return cls(targets, model, rows, routes=routed, **settings)

    def __post_init__(self) -> None:
        if not self.targets and not self.routes:
            raise ValueError("a load needs at least one target")
        for target in self.targets:
            loopback_target(target)
        if self.routes:
            routed = [target for route in self.routes for target in route.targets]
            if len(set(routed)) != len(routed) or sorted(routed) != sorted(self.targets):
                raise ValueError("routes: every target on exactly one route, and no other")
            if len({route.name for route in self.routes}) != len(self.routes):
                raise ValueError("routes: one route a name")
        if not self.rows or len({len(r) for r in self.rows}) != 1:
            raise ValueError("rows: give at least one row, all of one length")
        if not 0 < self.rate <= MAX_RATE:
            raise ValueError(f"rate: requests per second per target, >0..{MAX_RATE:g}")
        if not 0 < self.seconds <= MAX_SECONDS:
            raise ValueError(f"seconds: how long to send, >0..{MAX_SECONDS:g}")
        if self.max_requests < 1:
            raise ValueError("max_requests: at least 1")

    def body(self, index: int) -> bytes:
        row = self.rows[index % len(self.rows)]
        tensor = {
            "name": self.input_name,
            "datatype": "FP32",
            "shape": [1, len(row)],
            "data": list(row),
        }
        return json.dumps({"inputs": [tensor]}).encode()

    def due(self, index: int) -> float:
        """Seconds after the start when request `index` (0-based) of a route is due."""
        return index / self.rate

    def paced_routes(self) -> tuple[Route, ...]:
        """The routes requests take: `routes`, or one route per target."""
        return self.routes or tuple(Route(target, (target,)) for target in self.targets)


@dataclass
class TargetResult:
    """What one target answered: a count per HTTP status (0: no answer), latencies of the
    answered requests in seconds, the first few failures, and how many of its 200 answers
    asked to close the connection (`Connection: close`: how a draining server sends its
    clients elsewhere)."""

    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    closing: int = 0

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def errors(self) -> int:
        """Requests answered 5xx or not at all."""
        return sum(n for status, n in self.statuses.items() if status == 0 or status >= 500)

    def quantile(self, q: float) -> float:
        """The q-quantile of the latencies (nearest rank), NaN when nothing was answered."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class LoadGenerator:
    """Runs a LoadPlan on one thread per route: `start()`, then `join()` (or `stop()` early);
    `results` maps each target to its TargetResult, `unrouted` counts per route the requests
    due while it had no target."""

    FAILURES_KEPT = 5

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.results = {target: TargetResult() for target in plan.targets}
        self.unrouted: Counter[str] = Counter()
        self.stopped = threading.Event()
        self._threads = [
            threading.Thread(target=self._send, args=(r,), name=f"load-{r.name}", daemon=True)
            for r in plan.paced_routes()
        ]

    def start(self) -> LoadGenerator:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        self.join()

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(left)

    def run(self) -> dict[str, TargetResult]:
        """Send the whole plan and wait for it."""
        self.start().join()
        return self.results

    def _send(self, route: Route) -> None:
        path = f"/v2/models/{self.plan.model}/infer"
        headers = {"Content-Type": "application/json"}
        with ExitStack() as pools:
            pool = {target: pools.enter_context(self._pool(target)) for target in route.targets}
            start = time.monotonic()
            for index in range(self.plan.max_requests):
                due = start + self.plan.due(index)
                if due - start >= self.plan.seconds:
                    break
                if self.stopped.wait(max(0.0, due - time.monotonic())):
                    break
                if not route.targets:
                    self.unrouted[route.name] += 1
                    continue
                target = route.targets[index % len(route.targets)]
                result = self.results[target]
                began = time.monotonic()
                try:
                    reply = pool[target].urlopen(
                        "POST", path, body=self.plan.body(index), headers=headers
                    )
                except urllib3.exceptions.HTTPError as err:
                    result.statuses[0] += 1
                    self._keep(result, f"{target}: {err}")
                    continue
                took = time.monotonic() - began
                result.statuses[reply.status] += 1
                if reply.status == 200:
                    result.latencies.append(took)
                    result.closing += reply.headers.get("Connection", "").lower() == "close"
                else:
                    text = reply.data[:200].decode(errors="replace")
                    self._keep(result, f"{target}: {reply.status} {text}")

    @staticmethod
    def _pool(target: str) -> urllib3.HTTPConnectionPool:
        parts = urlsplit(target)  # checked by loopback_target: an address and a port
        return urllib3.HTTPConnectionPool(
            parts.hostname or "", parts.port, maxsize=1, timeout=REQUEST_TIMEOUT, retries=False
        )

    def _keep(self, result: TargetResult, failure: str) -> None:
        if len(result.failures) < self.FAILURES_KEPT:
            result.failures.append(failure)


def digits_rows(count: int = 64) -> tuple[tuple[float, ...], ...]:
    """Real inputs for the digits models: rows of scikit-learn's 8x8 digits (0..16)."""
    from sklearn.datasets import load_digits

    data = load_digits().data[:count]
    return tuple(tuple(float(v) for v in row) for row in data)


def run_load(
    targets: Sequence[str], model: str, *, rate: float = 20.0, seconds: float = 10.0
) -> dict[str, TargetResult]:
    """Digits rows to every target at `rate` per second each for `seconds`; waits."""
    plan = LoadPlan(tuple(targets), model, digits_rows(), rate=rate, seconds=seconds)
    return LoadGenerator(plan).run()


class FollowingLoad:
    """Load that follows a fleet while it changes (a rollout replaces pods, each with a new
    address): every `burst_seconds` it asks `find_targets` where the servers are now and runs
    one LoadPlan burst to them, until `stop()` or `seconds` in all. Results add up per target.

    `find_targets` returns the targets, each then loaded at `rate`; or, routed per site, a
    mapping of each site to its servers: each site is then loaded at `rate`, its servers
    taking the requests in turn, and a site with none counts its due requests in `unrouted`.
    Either way the load acts on what it found for a burst, so it learns of a change up to
    `burst_seconds` late, as kube-proxy does."""

    def __init__(
        self,
        find_targets: Callable[[], Sequence[str] | Mapping[str, Sequence[str]]],
        model: str,
        rows: tuple[tuple[float, ...], ...],
        *,
        rate: float = 20.0,
        seconds: float = 300.0,
        burst_seconds: float = 1.0,
    ) -> None:
        if not 0 < seconds <= MAX_SECONDS:
            raise ValueError(f"seconds: how long to follow, >0..{MAX_SECONDS:g}")
        self.find_targets, self.model, self.rows = find_targets, model, rows
        self.rate, self.seconds, self.burst_seconds = rate, seconds, burst_seconds
        self.results: dict[str, TargetResult] = {}
        self.unrouted: Counter[str] = Counter()  # per site: requests due while it had no server
        self.problems: list[str] = []  # why a burst found nothing to load, the first few
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self._thread = threading.Thread(target=self._follow, name="following-load", daemon=True)
        self._current: LoadGenerator | None = None

    def start(self) -> FollowingLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        current = self._current
        if current is not None:
            current.stopped.set()
        self._thread.join()

    def __enter__(self) -> FollowingLoad:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def snapshot(self) -> dict[str, TargetResult]:
        """The results so far, copied."""
        with self.lock:
            return {
                target: TargetResult(
                    Counter(r.statuses), list(r.latencies), list(r.failures), r.closing
                )
                for target, r in self.results.items()
            }

    def _plan(self, seconds: float) -> LoadPlan | None:
        """The next burst's plan to the servers `find_targets` finds now; None: none found."""
        found = self.find_targets()
        if not found:
            return None
        if isinstance(found, Mapping):
            return LoadPlan.by_route(found, self.model, self.rows, rate=self.rate, seconds=seconds)
        targets = tuple(dict.fromkeys(found))
        return LoadPlan(targets, self.model, self.rows, rate=self.rate, seconds=seconds)

    def _follow(self) -> None:
        deadline = time.monotonic() + self.seconds
        while not self.stopped.is_set() and (left := deadline - time.monotonic()) > 0:
            try:
                plan = self._plan(min(self.burst_seconds, left))
            except Exception as err:
                # The caller's lookup (an API call) failed, or it found what no plan may load
                # (an address beyond loopback): go on, keep the first few.
                if len(self.problems) < LoadGenerator.FAILURES_KEPT:
                    self.problems.append(repr(err))
                plan = None
            if plan is None:
                self.stopped.wait(min(0.2, left))
                continue
            self._current = LoadGenerator(plan)
            burst = self._current.run()
            with self.lock:
                self.unrouted.update(self._current.unrouted)
                for target, result in burst.items():
                    total = self.results.setdefault(target, TargetResult())
                    total.statuses.update(result.statuses)
                    total.latencies += result.latencies
                    total.closing += result.closing
                    room = LoadGenerator.FAILURES_KEPT - len(total.failures)
                    total.failures += result.failures[: max(0, room)]
