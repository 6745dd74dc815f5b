"""Aggregation suspects kept by a trigger: ``aggregation_amplified`` reads a few rows, not a day of runs.

The alert (SPEC "Alerts") reports an aggregation in a pipeline that has more than one,
or one that starts before an earlier-started aggregation of its year has ended (a
running one's end is "now"). Both are checks on *pairs* of runs, so the read used to
sort and hash every aggregation of the last day (28,000 in the bench): the largest
part of the console's first render.

``pipelines_aggregation_suspect`` holds the ids of every aggregation that is in such a
pair under a wider reading — a run not finished counts as never ending — so it is a
superset of what the alert can ever report. The alert verifies its exact rule (window,
the user's modules, "now") on these rows only (``pipelines.alerts``). Why a superset is
enough: a pair can only start to overlap or to share a pipeline when one of its two rows
is inserted or changes ``job_type``, ``pipeline_id``, ``pipeline_year``, ``started_at``,
or gets a later (or no) ``finished_at``; the trigger runs exactly then, and a finish
(``finished_at`` set on a running job) only ever shrinks the wider reading. In the
engine that is one row per aggregation at its claim (or take-over) and at planning.

Concurrency: two aggregations of one year claimed in two transactions at once would
not see each other's uncommitted start. The trigger takes a transaction-scoped advisory
lock on the year (``0x5110, year``) before looking, so the second one looks after the
first commits (READ COMMITTED: each statement of the function takes a new snapshot);
likewise a pipeline key (``0x5111``) for the "more than one per pipeline" check. The
lock is the last one a claim takes before the event counter row, and no transaction
takes a row lock while waiting for it, so it adds no lock cycle (docs/ENGINE.md). Rows
are appended without a unique constraint (a concurrent duplicate is harmless), so the
trigger never waits on another transaction's insert.

The GiST index finds the runs whose span meets a given run's span (spans inclusive,
open-ended while ``finished_at`` is NULL; a finish before the start is read as a point):
the trigger's only probe, one index descent. The alert no longer reads
``job_aggregation_newest``, dropped here.
"""

from django.db import migrations, models

# The span of a run is written the same way in the index and in the probes (the planner
# matches the expression): tstzrange(started_at, <end>, '[]') with <end> NULL while the
# run is not finished, else greatest(started_at, finished_at), so lower <= upper always
# and no row can make tstzrange() raise.
FORWARD = r"""
CREATE TABLE pipelines_aggregation_suspect (job_id bigint NOT NULL);
CREATE INDEX aggregation_suspect_job ON pipelines_aggregation_suspect (job_id);

CREATE INDEX job_aggregation_span ON pipelines_job USING gist ((tstzrange(
    started_at, CASE WHEN finished_at IS NULL THEN NULL ELSE greatest(started_at, finished_at) END, '[]')))
    WHERE job_type = 'aggregation' AND started_at IS NOT NULL;

CREATE FUNCTION sluice_aggregation_suspects() RETURNS trigger LANGUAGE plpgsql AS $$
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

-- Evaluated in C: every other job, and an aggregation's heartbeats, progress and finish,
-- cost nothing.
CREATE TRIGGER job_aggregation_suspects_insert AFTER INSERT ON pipelines_job
    FOR EACH ROW WHEN (NEW.job_type = 'aggregation') EXECUTE FUNCTION sluice_aggregation_suspects();
CREATE TRIGGER job_aggregation_suspects_update
    AFTER UPDATE OF job_type, pipeline_id, pipeline_year, started_at, finished_at ON pipelines_job
    FOR EACH ROW WHEN (NEW.job_type = 'aggregation' AND (
        OLD.job_type IS DISTINCT FROM NEW.job_type OR OLD.pipeline_id IS DISTINCT FROM NEW.pipeline_id
        OR (NEW.started_at IS NOT NULL AND (
            OLD.started_at IS DISTINCT FROM NEW.started_at OR OLD.pipeline_year IS DISTINCT FROM NEW.pipeline_year
            OR (OLD.finished_at IS NOT NULL AND (NEW.finished_at IS NULL OR NEW.finished_at > OLD.finished_at))))))
    EXECUTE FUNCTION sluice_aggregation_suspects();

-- Deleted jobs leave the suspects with them (retention); TRUNCATE (the test runner's
-- flush) empties them.
CREATE FUNCTION sluice_aggregation_suspects_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM pipelines_aggregation_suspect;
    ELSE
        DELETE FROM pipelines_aggregation_suspect k USING gone g WHERE k.job_id = g.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER job_aggregation_suspects_delete AFTER DELETE ON pipelines_job
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION sluice_aggregation_suspects_removed();
CREATE TRIGGER job_aggregation_suspects_truncate AFTER TRUNCATE ON pipelines_job
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_aggregation_suspects_removed();
"""

# What exists already: every pair, from the index (one probe per started aggregation),
# and every pipeline with more than one aggregation.
FILL = r"""
INSERT INTO pipelines_aggregation_suspect (job_id)
SELECT DISTINCT id FROM (
    SELECT unnest(ARRAY[s.id, x.id]) AS id
    FROM pipelines_job x JOIN pipelines_job s
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
    WHERE x.job_type = 'aggregation' AND x.started_at IS NOT NULL
    UNION ALL
    SELECT j.id FROM pipelines_job j
    WHERE j.job_type = 'aggregation' AND j.pipeline_id IN (
        SELECT pipeline_id FROM pipelines_job WHERE job_type = 'aggregation' GROUP BY 1 HAVING count(*) > 1)
) found;
"""

BACKWARD = """
DROP TRIGGER job_aggregation_suspects_truncate ON pipelines_job;
DROP TRIGGER job_aggregation_suspects_delete ON pipelines_job;
DROP TRIGGER job_aggregation_suspects_update ON pipelines_job;
DROP TRIGGER job_aggregation_suspects_insert ON pipelines_job;
DROP FUNCTION sluice_aggregation_suspects_removed(), sluice_aggregation_suspects();
DROP INDEX job_aggregation_span;
DROP TABLE pipelines_aggregation_suspect;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('pipelines', '0010_operator_action_purge'),
    ]

    operations = [
        migrations.RunSQL(FORWARD + FILL + "ANALYZE pipelines_aggregation_suspect;", BACKWARD),
        # State only (managed = False): the table is the RunSQL's.
        migrations.CreateModel(
            name='AggregationSuspect',
            fields=[('job_id', models.BigIntegerField(primary_key=True, serialize=False))],
            options={'db_table': 'pipelines_aggregation_suspect', 'managed': False},
        ),
        migrations.RemoveIndex(model_name='job', name='job_aggregation_newest'),
    ]
