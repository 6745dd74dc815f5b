"""The console's counters, kept by PostgreSQL triggers (issue 11, "Cheap enough to leave open all day").

Why triggers and not Python: every path that changes a job (the engine's compare-and-set
transitions, the reaper, admin actions, retention purges, raw SQL in a shell) goes
through these statements, so the counters cannot miss one; and the engine's code is
untouched. Why *delta rows* and not one counter row per key: a row updated in place by
every transition would be locked until each transition commits, serialising workers
(and ordering those locks differently in a multi-job cancel could deadlock). Each
trigger only appends ``(key, ±n)`` rows, which never conflict; readers ``SUM`` them and
``pipelines.counters.compact`` folds them up (beat, every minute). ``manage.py
sluice_counters --check`` compares them with a direct count, ``--rebuild`` repairs.

- ``pipelines_job_tally``: jobs by pipeline year, module, job type, queue, state, result
  (``GET /jobs/stats/`` counts without a scan of the whole job table).
- ``pipelines_job_finish_tally``: jobs by the UTC hour of ``finished_at``, module and
  result (the console's "failed in 24 h" and success rate: whole hours from here, the
  two partial hours at the window's edges counted directly).
- ``pipelines_job.pipeline_year``: the pipeline's year copied onto the job (the
  ``aggregation_amplified`` alert partitions a day of aggregations by year).

Jobs are keyed by their pipeline's year and module, read in the trigger. A job whose
pipeline is deleted first (a raw purge: the foreign key is deferred) is subtracted by
the pipeline's delete trigger; the job's own delete then finds no pipeline and skips it.
"""

from django.db import migrations, models

FORWARD = r"""
CREATE TABLE pipelines_job_tally (
    year integer, module varchar(40) NOT NULL, job_type varchar(40) NOT NULL, queue varchar(40) NOT NULL,
    state varchar(20) NOT NULL, result varchar(20), n bigint NOT NULL
);
CREATE TABLE pipelines_job_finish_tally (
    hour timestamptz NOT NULL, module varchar(40) NOT NULL, result varchar(20), n bigint NOT NULL
);
CREATE INDEX job_finish_tally_hour ON pipelines_job_finish_tally (hour);

-- The pipeline's year onto the job (BEFORE: the row is written once, with it).
CREATE FUNCTION sluice_job_pipeline_year() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.pipeline_year := (SELECT year FROM pipelines_pipeline WHERE id = NEW.pipeline_id);
    RETURN NEW;
END $$;
CREATE TRIGGER job_pipeline_year BEFORE INSERT OR UPDATE OF pipeline_id, pipeline_year ON pipelines_job
    FOR EACH ROW EXECUTE FUNCTION sluice_job_pipeline_year();

-- Inserted jobs (planning inserts a pipeline's jobs in one statement): one aggregate.
CREATE FUNCTION sluice_tally_jobs_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pipelines_job_tally (year, module, job_type, queue, state, result, n)
    SELECT p.year, p.module, j.job_type, j.queue, j.state, j.result, count(*)
    FROM added j JOIN pipelines_pipeline p ON p.id = j.pipeline_id
    GROUP BY 1, 2, 3, 4, 5, 6;
    INSERT INTO pipelines_job_finish_tally (hour, module, result, n)
    SELECT date_trunc('hour', j.finished_at, 'UTC'), p.module, j.result, count(*)
    FROM added j JOIN pipelines_pipeline p ON p.id = j.pipeline_id
    WHERE j.finished_at IS NOT NULL
    GROUP BY 1, 2, 3;
    RETURN NULL;
END $$;
CREATE TRIGGER job_tally_insert AFTER INSERT ON pipelines_job
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION sluice_tally_jobs_added();

-- Deleted jobs whose pipeline still exists (see the module docstring for the others).
CREATE FUNCTION sluice_tally_jobs_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pipelines_job_tally (year, module, job_type, queue, state, result, n)
    SELECT p.year, p.module, j.job_type, j.queue, j.state, j.result, -count(*)
    FROM gone j JOIN pipelines_pipeline p ON p.id = j.pipeline_id
    GROUP BY 1, 2, 3, 4, 5, 6;
    INSERT INTO pipelines_job_finish_tally (hour, module, result, n)
    SELECT date_trunc('hour', j.finished_at, 'UTC'), p.module, j.result, -count(*)
    FROM gone j JOIN pipelines_pipeline p ON p.id = j.pipeline_id
    WHERE j.finished_at IS NOT NULL
    GROUP BY 1, 2, 3;
    RETURN NULL;
END $$;
CREATE TRIGGER job_tally_delete AFTER DELETE ON pipelines_job
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION sluice_tally_jobs_removed();

-- A transition: row-level, and only when a counted column really changed (the WHEN
-- clause is evaluated in C: heartbeats and progress updates cost nothing).
CREATE FUNCTION sluice_tally_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    old_year integer; old_module varchar; old_found boolean;
    new_year integer; new_module varchar; new_found boolean;
BEGIN
    SELECT year, module INTO old_year, old_module FROM pipelines_pipeline WHERE id = OLD.pipeline_id;
    old_found := FOUND;
    IF NEW.pipeline_id = OLD.pipeline_id THEN
        new_year := old_year; new_module := old_module; new_found := old_found;
    ELSE
        SELECT year, module INTO new_year, new_module FROM pipelines_pipeline WHERE id = NEW.pipeline_id;
        new_found := FOUND;
    END IF;
    IF old_found AND new_found THEN
        INSERT INTO pipelines_job_tally (year, module, job_type, queue, state, result, n) VALUES
            (old_year, old_module, OLD.job_type, OLD.queue, OLD.state, OLD.result, -1),
            (new_year, new_module, NEW.job_type, NEW.queue, NEW.state, NEW.result, 1);
    ELSIF old_found THEN
        INSERT INTO pipelines_job_tally (year, module, job_type, queue, state, result, n) VALUES
            (old_year, old_module, OLD.job_type, OLD.queue, OLD.state, OLD.result, -1);
    ELSIF new_found THEN
        INSERT INTO pipelines_job_tally (year, module, job_type, queue, state, result, n) VALUES
            (new_year, new_module, NEW.job_type, NEW.queue, NEW.state, NEW.result, 1);
    END IF;
    IF old_found AND OLD.finished_at IS NOT NULL AND (OLD.finished_at IS DISTINCT FROM NEW.finished_at
            OR OLD.result IS DISTINCT FROM NEW.result OR old_module IS DISTINCT FROM new_module) THEN
        INSERT INTO pipelines_job_finish_tally (hour, module, result, n)
        VALUES (date_trunc('hour', OLD.finished_at, 'UTC'), old_module, OLD.result, -1);
    END IF;
    IF new_found AND NEW.finished_at IS NOT NULL AND (OLD.finished_at IS DISTINCT FROM NEW.finished_at
            OR OLD.result IS DISTINCT FROM NEW.result OR old_module IS DISTINCT FROM new_module) THEN
        INSERT INTO pipelines_job_finish_tally (hour, module, result, n)
        VALUES (date_trunc('hour', NEW.finished_at, 'UTC'), new_module, NEW.result, 1);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER job_tally_update
    AFTER UPDATE OF state, result, job_type, queue, pipeline_id, finished_at ON pipelines_job
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.result IS DISTINCT FROM NEW.result
        OR OLD.job_type IS DISTINCT FROM NEW.job_type OR OLD.queue IS DISTINCT FROM NEW.queue
        OR OLD.pipeline_id IS DISTINCT FROM NEW.pipeline_id OR OLD.finished_at IS DISTINCT FROM NEW.finished_at)
    EXECUTE FUNCTION sluice_tally_job_changed();

-- A pipeline deleted while jobs of it remain (in this transaction): take them out now.
CREATE FUNCTION sluice_tally_pipelines_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pipelines_job_tally (year, module, job_type, queue, state, result, n)
    SELECT p.year, p.module, j.job_type, j.queue, j.state, j.result, -count(*)
    FROM gone p JOIN pipelines_job j ON j.pipeline_id = p.id
    GROUP BY 1, 2, 3, 4, 5, 6;
    INSERT INTO pipelines_job_finish_tally (hour, module, result, n)
    SELECT date_trunc('hour', j.finished_at, 'UTC'), p.module, j.result, -count(*)
    FROM gone p JOIN pipelines_job j ON j.pipeline_id = p.id
    WHERE j.finished_at IS NOT NULL
    GROUP BY 1, 2, 3;
    RETURN NULL;
END $$;
CREATE TRIGGER pipeline_tally_delete AFTER DELETE ON pipelines_pipeline
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION sluice_tally_pipelines_removed();

-- A pipeline's year or module changed: its jobs move to the new key.
CREATE FUNCTION sluice_tally_pipeline_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pipelines_job_tally (year, module, job_type, queue, state, result, n)
    SELECT y, m, j.job_type, j.queue, j.state, j.result, sign * count(*)
    FROM pipelines_job j,
         (VALUES (OLD.year, OLD.module, -1), (NEW.year, NEW.module, 1)) AS k (y, m, sign)
    WHERE j.pipeline_id = NEW.id
    GROUP BY 1, 2, 3, 4, 5, 6, sign;
    INSERT INTO pipelines_job_finish_tally (hour, module, result, n)
    SELECT date_trunc('hour', j.finished_at, 'UTC'), m, j.result, sign * count(*)
    FROM pipelines_job j, (VALUES (OLD.module, -1), (NEW.module, 1)) AS k (m, sign)
    WHERE j.pipeline_id = NEW.id AND j.finished_at IS NOT NULL
    GROUP BY 1, 2, 3, sign;
    IF OLD.year IS DISTINCT FROM NEW.year THEN
        UPDATE pipelines_job SET pipeline_year = NEW.year WHERE pipeline_id = NEW.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER pipeline_tally_update AFTER UPDATE OF year, module ON pipelines_pipeline
    FOR EACH ROW WHEN (OLD.year IS DISTINCT FROM NEW.year OR OLD.module IS DISTINCT FROM NEW.module)
    EXECUTE FUNCTION sluice_tally_pipeline_moved();

-- TRUNCATE fires no row triggers (the test runner's flush truncates): empty the tallies.
CREATE FUNCTION sluice_tally_jobs_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pipelines_job_tally;
    DELETE FROM pipelines_job_finish_tally;
    RETURN NULL;
END $$;
CREATE TRIGGER job_tally_truncate AFTER TRUNCATE ON pipelines_job
    FOR EACH STATEMENT EXECUTE FUNCTION sluice_tally_jobs_truncated();

-- What exists already.
UPDATE pipelines_job j SET pipeline_year = p.year
    FROM pipelines_pipeline p WHERE p.id = j.pipeline_id AND p.year IS NOT NULL;
INSERT INTO pipelines_job_tally (year, module, job_type, queue, state, result, n)
    SELECT p.year, p.module, j.job_type, j.queue, j.state, j.result, count(*)
    FROM pipelines_job j JOIN pipelines_pipeline p ON p.id = j.pipeline_id GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO pipelines_job_finish_tally (hour, module, result, n)
    SELECT date_trunc('hour', j.finished_at, 'UTC'), p.module, j.result, count(*)
    FROM pipelines_job j JOIN pipelines_pipeline p ON p.id = j.pipeline_id
    WHERE j.finished_at IS NOT NULL GROUP BY 1, 2, 3;
"""

BACKWARD = r"""
DROP TRIGGER job_tally_truncate ON pipelines_job;
DROP TRIGGER pipeline_tally_update ON pipelines_pipeline;
DROP TRIGGER pipeline_tally_delete ON pipelines_pipeline;
DROP TRIGGER job_tally_update ON pipelines_job;
DROP TRIGGER job_tally_delete ON pipelines_job;
DROP TRIGGER job_tally_insert ON pipelines_job;
DROP TRIGGER job_pipeline_year ON pipelines_job;
DROP FUNCTION sluice_tally_jobs_truncated(), sluice_tally_pipeline_moved(), sluice_tally_pipelines_removed(),
    sluice_tally_job_changed(), sluice_tally_jobs_removed(), sluice_tally_jobs_added(), sluice_job_pipeline_year();
DROP TABLE pipelines_job_finish_tally, pipelines_job_tally;
"""


class Migration(migrations.Migration):

    dependencies = [
        ('pipelines', '0004_console_indexes'),
    ]

    operations = [
        migrations.AddField(
            model_name='job',
            name='pipeline_year',
            field=models.IntegerField(blank=True, editable=False, null=True),
        ),
        migrations.RunSQL(FORWARD, BACKWARD),
        migrations.AddIndex(
            model_name='job',
            index=models.Index(condition=models.Q(('finished_at__isnull', False), ('result__in', ['success', 'warning']), ('started_at__isnull', False), ('state', 'finished')), fields=['-created_at', '-id'], include=('job_type', 'started_at', 'finished_at'), name='job_ok_newest'),
        ),
        migrations.AddIndex(
            model_name='job',
            index=models.Index(condition=models.Q(('job_type', 'aggregation')), fields=['-created_at'], include=('id', 'pipeline_id', 'pipeline_year', 'started_at', 'finished_at'), name='job_aggregation_newest'),
        ),
    ]
