"""The ``source_fetch`` job kind (listed in ``SLUICE_HANDLER_MODULES``)."""

from __future__ import annotations

from ingestion.sources import services
from pipelines.context import JobContext
from pipelines.registry import Outcome, register


# One attempt: the fetch retries transient failures itself (SLUICE_SOURCE_ATTEMPTS) and
# ends with a clear error; the operator's retry runs it again.
@register(services.FETCH_JOB, queue="default", max_attempts=1)
def source_fetch(ctx: JobContext) -> Outcome:
    return services.source_fetch_run(ctx=ctx)
