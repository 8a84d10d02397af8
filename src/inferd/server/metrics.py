"""Prometheus metrics with vLLM's names under the ``inferd:`` prefix (dashboards port with a rename).

Counters appear in the text format with prometheus_client's ``_total`` suffix, as vLLM's do
(``inferd:prompt_tokens_total``). The scheduler's metrics (requests running / waiting, KV usage, prefix cache,
preemptions) carry an ``engine`` label too, the data-parallel replica ("0" without data parallelism), as vLLM's do.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE_LATEST
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

from inferd.engine.core_types import SchedulerStats
from inferd.engine.stats import IterationStats

_TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
_ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
_E2E_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
_FINISH_REASONS = ("stop", "length", "abort")


def _token_buckets(max_value: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (vLLM's build_1_2_5_buckets)."""
    out: list[float] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            value = m * 10**exponent
            if value > max_value:
                return out
            out.append(float(value))
        exponent += 1


class PrometheusStatLogger:
    """A ``StatLoggerBase`` that feeds a per-app ``CollectorRegistry`` (two apps in one process never collide)."""

    def __init__(
        self, model_name: str, max_model_len: int = 1 << 20, registry: CollectorRegistry | None = None
    ):
        self.registry = registry if registry is not None else CollectorRegistry()
        if registry is None:  # process_resident_memory_bytes etc. of the API server (Linux), as vLLM exports
            ProcessCollector(registry=self.registry)
        labels = ["model_name"]
        reg = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, [*labels, "engine"], registry=reg)

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, [*labels, *extra], registry=reg)

        def histogram(name: str, doc: str, buckets: tuple[float, ...] | list[float]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=reg)

        m = model_name
        self.num_requests_running = gauge(
            "inferd:num_requests_running", "Requests in model execution batches."
        )
        self.num_requests_waiting = gauge("inferd:num_requests_waiting", "Requests waiting to be processed.")
        self.kv_cache_usage = gauge("inferd:kv_cache_usage_perc", "KV-cache usage; 1 means 100 percent.")
        self.prefix_cache_queries = counter(
            "inferd:prefix_cache_queries", "Prefix-cache queries, in tokens looked up.", ("engine",)
        )
        self.prefix_cache_hits = counter(
            "inferd:prefix_cache_hits", "Prefix-cache hits, in tokens found.", ("engine",)
        )
        self.num_preemptions = counter(
            "inferd:num_preemptions", "Cumulative number of preemptions.", ("engine",)
        )
        self.prompt_tokens = counter("inferd:prompt_tokens", "Prefill tokens processed.").labels(m)
        self.generation_tokens = counter("inferd:generation_tokens", "Generation tokens processed.").labels(m)
        success = counter(
            "inferd:request_success", "Finished requests, by finish reason.", ("finished_reason",)
        )
        self.request_success = {r: success.labels(m, r) for r in _FINISH_REASONS}
        self._request_success = success
        self._model_name = m
        self.ttft = histogram(
            "inferd:time_to_first_token_seconds", "Time to first token in seconds.", _TTFT_BUCKETS
        ).labels(m)
        self.itl = histogram(
            "inferd:inter_token_latency_seconds", "Time between output tokens in seconds.", _ITL_BUCKETS
        ).labels(m)
        self.e2e = histogram(
            "inferd:e2e_request_latency_seconds", "End-to-end request latency in seconds.", _E2E_BUCKETS
        ).labels(m)
        token_buckets = _token_buckets(max_model_len)
        self.request_prompt_tokens = histogram(
            "inferd:request_prompt_tokens", "Prompt tokens per finished request.", token_buckets
        ).labels(m)
        self.request_generation_tokens = histogram(
            "inferd:request_generation_tokens", "Generated tokens per finished request.", token_buckets
        ).labels(m)
        self.request_max_tokens = histogram(
            "inferd:request_params_max_tokens",
            "The max_tokens parameter of finished requests.",
            token_buckets,
        ).labels(m)
        # SchedulerStats carries cumulative counts; counters advance by the difference (per engine).
        self._last: dict[tuple[Counter, str], int] = {}
        for metric in self._engine_metrics():
            metric.labels(m, "0")  # present (at 0) before the first stats arrive

    def record(self, scheduler_stats: SchedulerStats | None, iteration_stats: IterationStats | None) -> None:
        """Update the metrics from one batch of engine outputs (cheap, never blocks)."""
        if scheduler_stats is not None:
            self.record_scheduler_stats(scheduler_stats)
        if iteration_stats is None:
            return
        self.prompt_tokens.inc(iteration_stats.num_prompt_tokens)
        self.generation_tokens.inc(iteration_stats.num_generation_tokens)
        for t in iteration_stats.time_to_first_tokens:
            self.ttft.observe(t)
        for t in iteration_stats.inter_token_latencies:
            self.itl.observe(t)
        for fin in iteration_stats.finished_requests:
            child = self.request_success.get(fin.finish_reason)
            if child is None:
                child = self._request_success.labels(self._model_name, fin.finish_reason)
            child.inc()
            self.e2e.observe(fin.e2e_latency)
            self.request_prompt_tokens.observe(fin.num_prompt_tokens)
            self.request_generation_tokens.observe(fin.num_generation_tokens)
            if fin.max_tokens_param is not None:
                self.request_max_tokens.observe(fin.max_tokens_param)

    def record_scheduler_stats(self, stats: SchedulerStats) -> None:
        """Stats with an ``engines`` list (the data-parallel client's aggregate) are recorded per replica,
        labelled ``engine="<index>"``; plain stats as ``engine="0"``."""
        per_engine: list[SchedulerStats] = getattr(stats, "engines", None) or [stats]
        m = self._model_name
        for index, s in enumerate(per_engine):
            engine = str(index)
            self.num_requests_running.labels(m, engine).set(s.num_running_reqs)
            self.num_requests_waiting.labels(m, engine).set(s.num_waiting_reqs)
            self.kv_cache_usage.labels(m, engine).set(s.kv_cache_usage)
            self._advance(self.prefix_cache_queries, engine, s.prefix_cache_queries)
            self._advance(self.prefix_cache_hits, engine, s.prefix_cache_hits)
            self._advance(self.num_preemptions, engine, s.num_preemptions)

    def _engine_metrics(self) -> tuple[Gauge | Counter, ...]:
        return (
            self.num_requests_running,
            self.num_requests_waiting,
            self.kv_cache_usage,
            self.prefix_cache_queries,
            self.prefix_cache_hits,
            self.num_preemptions,
        )

    def _advance(self, counter: Counter, engine: str, current: int) -> None:
        key = (counter, engine)
        last = self._last.get(key, 0)
        if current > last:
            counter.labels(self._model_name, engine).inc(current - last)
        self._last[key] = (
            current  # a smaller value means the engine restarted its count: follow it from there
        )

    def render(self) -> bytes:
        """The registry in Prometheus' text exposition format."""
        return generate_latest(self.registry)
