"""The aggregation suspects trigger (migration 0011) made cheap for bulk inserts and lock-table safe.

- A partial index on a pipeline's aggregations (``job_aggregation_pipeline``) for the
  "more than one per pipeline" probe, and the function forbids sequential scans: before
  the planner has statistics (a fresh database loaded in one statement) its cached plans
  could otherwise scan the growing job table once per inserted aggregation — the
  1M-job bench seed ran for minutes instead of seconds.
- That check, for an inserted aggregation, locks its pipeline's row (``FOR NO KEY
  UPDATE``, a tuple lock) instead of an advisory lock per pipeline (``0x5111``): a bulk
  insert of many pipelines' jobs took one lock-table entry per pipeline, enough to run
  out of shared memory. Planning inserts a new pipeline's jobs in the transaction that
  created it, so nobody waits. A job turned into an aggregation by hand takes the year
  lock (``0x5110``), as a claim does.
"""

from django.db import migrations

FORWARD = r"""
CREATE INDEX job_aggregation_pipeline ON pipelines_job (pipeline_id) WHERE job_type = 'aggregation';

-- Index probes whatever the statistics say: a bulk insert into a table the planner still
-- thinks empty (a fresh database being loaded) would otherwise get sequential scans,
-- once per inserted aggregation.
CREATE OR REPLACE FUNCTION sluice_aggregation_suspects() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.job_type IS DISTINCT FROM NEW.job_type
            OR OLD.pipeline_id IS DISTINCT FROM NEW.pipeline_id THEN
        IF TG_OP = 'INSERT' THEN
            PERFORM 1 FROM pipelines_pipeline WHERE id = NEW.pipeline_id FOR NO KEY UPDATE;
        ELSE
            PERFORM pg_advisory_xact_lock(x'5110'::int, coalesce(NEW.pipeline_year, -1));
        END IF;
        INSERT INTO pipelines_aggregation_suspect (job_id)
        SELECT DISTINCT id FROM (
            SELECT s.id FROM pipelines_job s
            WHERE s.pipeline_id = NEW.pipeline_id AND s.job_type = 'aggregation' AND s.id <> NEW.id
            UNION ALL
            SELECT NEW.id WHERE EXISTS (SELECT 1 FROM pipelines_job s WHERE s.pipeline_id = NEW.pipeline_id
                                        AND s.job_type = 'aggregation' AND s.id <> NEW.id)
        ) doubled
        WHERE NOT EXISTS (SELECT 1 FROM pipelines_aggregation_suspect k WHERE k.job_id = doubled.id);
    END IF;
    IF NEW.started_at IS NOT NULL AND NEW.pipeline_year IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(x'5110'::int, NEW.pipeline_year);
        INSERT INTO pipelines_aggregation_suspect (job_id)
        SELECT DISTINCT id FROM (
            SELECT unnest(ARRAY[s.id, x.id]) AS id
            FROM (SELECT NEW.id, NEW.started_at, NEW.finished_at, NEW.pipeline_year) AS x (id, started_at,
                                                                                          finished_at, pipeline_year)
            JOIN pipelines_job s
              ON s.job_type = 'aggregation' AND s.started_at IS NOT NULL
             AND tstzrange(s.started_at, CASE WHEN s.finished_at IS NULL THEN NULL
                                                  ELSE greatest(s.started_at, s.finished_at) END, '[]')
              && tstzrange(x.started_at, CASE WHEN x.finished_at IS NULL THEN NULL
                                              ELSE greatest(x.started_at, x.finished_at) END, '[]')
             AND s.pipeline_year = x.pipeline_year AND s.id <> x.id
             -- the later-starting one (by start, then id) starts before the earlier one ends
             AND CASE WHEN (s.started_at, s.id) < (x.started_at, x.id)
                      THEN coalesce(s.finished_at, 'infinity') > x.started_at
                      ELSE coalesce(x.finished_at, 'infinity') > s.started_at END
        ) overlapping
        WHERE NOT EXISTS (SELECT 1 FROM pipelines_aggregation_suspect k WHERE k.job_id = overlapping.id);
    END IF;
    RETURN NULL;
END $$;
"""

BACKWARD = r"""
CREATE OR REPLACE FUNCTION sluice_aggregation_suspects() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR OLD.job_type IS DISTINCT FROM NEW.job_type
            OR OLD.pipeline_id IS DISTINCT FROM NEW.pipeline_id THEN
        PERFORM pg_advisory_xact_lock(x'5111'::int, hashtext(NEW.pipeline_id::text));
        INSERT INTO pipelines_aggregation_suspect (job_id)
        SELECT DISTINCT id FROM (
            SELECT s.id FROM pipelines_job s
            WHERE s.pipeline_id = NEW.pipeline_id AND s.job_type = 'aggregation' AND s.id <> NEW.id
            UNION ALL
            SELECT NEW.id WHERE EXISTS (SELECT 1 FROM pipelines_job s WHERE s.pipeline_id = NEW.pipeline_id
                                        AND s.job_type = 'aggregation' AND s.id <> NEW.id)
        ) doubled
        WHERE NOT EXISTS (SELECT 1 FROM pipelines_aggregation_suspect k WHERE k.job_id = doubled.id);
    END IF;
    IF NEW.started_at IS NOT NULL AND NEW.pipeline_year IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(x'5110'::int, NEW.pipeline_year);
        INSERT INTO pipelines_aggregation_suspect (job_id)
        SELECT DISTINCT id FROM (
            SELECT unnest(ARRAY[s.id, x.id]) AS id
            FROM (SELECT NEW.id, NEW.started_at, NEW.finished_at, NEW.pipeline_year) AS x (id, started_at,
                                                                                          finished_at, pipeline_year)
            JOIN pipelines_job s
              ON s.job_type = 'aggregation' AND s.started_at IS NOT NULL
             AND tstzrange(s.started_at, CASE WHEN s.finished_at IS NULL THEN NULL
                                                  ELSE greatest(s.started_at, s.finished_at) END, '[]')
              && tstzrange(x.started_at, CASE WHEN x.finished_at IS NULL THEN NULL
                                              ELSE greatest(x.started_at, x.finished_at) END, '[]')
             AND s.pipeline_year = x.pipeline_year AND s.id <> x.id
             -- the later-starting one (by start, then id) starts before the earlier one ends
             AND CASE WHEN (s.started_at, s.id) < (x.started_at, x.id)
                      THEN coalesce(s.finished_at, 'infinity') > x.started_at
                      ELSE coalesce(x.finished_at, 'infinity') > s.started_at END
        ) overlapping
        WHERE NOT EXISTS (SELECT 1 FROM pipelines_aggregation_suspect k WHERE k.job_id = overlapping.id);
    END IF;
    RETURN NULL;
END $$;
DROP INDEX job_aggregation_pipeline;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('pipelines', '0012_error_alert_indexes'),
    ]

    operations = [
        migrations.RunSQL(FORWARD, BACKWARD),
    ]
