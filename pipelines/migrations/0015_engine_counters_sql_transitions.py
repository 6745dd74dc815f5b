"""Claim and finish in one round trip each (issue 13): the counters they keep on the
pipeline row, and the PL/pgSQL functions ``pipelines.services.sql_transitions`` calls.

The rules are not here: every call passes the transitions it makes (from-states, to-state,
guard, ownership, event kind: ``transitions.TABLE``) and the result sets of ``dag`` as
``p_rules``, so the table stays their one source. What is here is the arithmetic of
``dag.pipeline_status``/``pipeline_progress`` and ``events.job_dict``/``pipeline_dict``
over the pipeline's counters, written so its output equals Python's bit for bit
(``sluice_py_round1`` is Python's ``round(x, 1)``); ``tests/pipelines/test_sql_transitions.py``
compares both paths on every transition they share.
"""

from django.db import migrations, models

BACKFILL = """
UPDATE pipelines_pipeline p
   SET jobs_queued = c.queued, jobs_running = c.running, success_count = c.success,
       cancelled_count = c.cancelled, superseded_count = c.superseded
  FROM (SELECT pipeline_id,
               count(*) FILTER (WHERE state = 'queued') AS queued,
               count(*) FILTER (WHERE state = 'running') AS running,
               count(*) FILTER (WHERE result = 'success') AS success,
               count(*) FILTER (WHERE result = 'cancelled') AS cancelled,
               count(*) FILTER (WHERE state = 'finished' AND coalesce(meta ->> 'superseded_by', '') <> '') AS superseded
          FROM pipelines_job GROUP BY pipeline_id) c
 WHERE c.pipeline_id = p.id
"""

FUNCTIONS = r"""
-- Python's round(x, 1), bit for bit: the exact binary value of x rounded half-even to one
-- decimal, then the nearest double (what CPython does). PostgreSQL's own round() works on
-- a 15-digit decimal image of x and rounds ties away from zero: 6.25 -> 6.3, Python 6.2.
CREATE OR REPLACE FUNCTION sluice_py_round1(x double precision) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    m double precision := abs(x);
    k integer := 0;
    p5 numeric := 1;
    p10 numeric := 1;
    t numeric;
    q numeric;
BEGIN
    IF x = 'NaN'::float8 OR m = 'Infinity'::float8 OR m >= 4503599627370496 THEN
        RETURN x;  -- no fraction to round (2^52 and above are whole numbers)
    END IF;
    WHILE m <> trunc(m) LOOP
        m := m * 2;  -- exact: only the exponent changes
        k := k + 1;
        p5 := p5 * 5;
        p10 := p10 * 10;
    END LOOP;
    -- |x| * 10 = m * 5^k * 10 / 10^k exactly; round that half-even to a whole number.
    t := m::bigint::numeric * p5 * 10;
    q := div(t, p10);
    IF 2 * (t - q * p10) > p10 OR (2 * (t - q * p10) = p10 AND mod(q, 2) = 1) THEN
        q := q + 1;
    END IF;
    RETURN sign(x) * (q / 10)::double precision;
END $$;

-- A float as Python's json.dumps writes it: 100.0, not 100 (the percentages of events).
CREATE OR REPLACE FUNCTION sluice_py_float_json(x double precision) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET extra_float_digits = 1 AS $$
    SELECT CASE WHEN x IS NULL THEN 'null'::jsonb
                WHEN x = trunc(x) THEN to_jsonb(round(x::numeric, 1))
                ELSE to_jsonb(x::text::numeric) END
$$;

-- Job.progress_percent rounded as events.job_dict does.
CREATE OR REPLACE FUNCTION sluice_job_percent(state text, processed bigint, total bigint) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN state = 'finished' THEN 100.0::float8
                WHEN total IS NOT NULL AND total <> 0 THEN sluice_py_round1(least(99.9::float8,
                    100.0::float8 * greatest(0.0::float8, least(1.0::float8, processed::float8 / total::float8))))
           END
$$;

-- The count keys of a job's meta, as LockedPipeline projects them.
CREATE OR REPLACE FUNCTION sluice_job_counts(meta jsonb, count_keys text[]) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_strip_nulls(coalesce(jsonb_object_agg(k, meta -> k), '{}'::jsonb)) FROM unnest(count_keys) AS k
$$;

CREATE OR REPLACE FUNCTION sluice_job_json(j pipelines_job, counts jsonb) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'id', j.id, 'job_type', j.job_type, 'det', j.det, 'queue', j.queue, 'state', j.state,
        'result', j.result, 'status_message', j.status_message, 'status_key', j.status_key,
        'status_params', coalesce(nullif(j.status_params, 'null'::jsonb), '{}'::jsonb),
        'progress', jsonb_build_object(
            'processed', j.progress_processed, 'total', j.progress_total,
            'percent', sluice_py_float_json(sluice_job_percent(j.state, j.progress_processed, j.progress_total)),
            'phase', j.phase),
        'counts', counts, 'attempts', j.attempts)
$$;

CREATE OR REPLACE FUNCTION sluice_pipeline_json(p pipelines_pipeline) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'id', p.id::text, 'kind', p.kind, 'year', p.year, 'module', p.module, 'status', p.status,
        'progress', jsonb_build_object(
            'processed', p.jobs_finished, 'total', p.jobs_total,
            'percent', sluice_py_float_json(p.progress_percent), 'phase', p.phase),
        'jobs_total', p.jobs_total, 'jobs_finished', p.jobs_finished, 'error_count', p.error_count)
$$;

-- transitions.holds, in SQL: from-state, guard columns, the owning attempt. A guard on a
-- column this does not know fails closed.
CREATE OR REPLACE FUNCTION sluice_transition_holds(j pipelines_job, t jsonb, attempt integer) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT j.state IN (SELECT jsonb_array_elements_text(t -> 'from'))
       AND NOT EXISTS (
           SELECT 1 FROM jsonb_each(t -> 'guard') AS g
            WHERE (CASE g.key WHEN 'cancel_requested' THEN j.cancel_requested = g.value::boolean
                              WHEN 'effect_committed' THEN j.effect_committed = g.value::boolean
                   END) IS NOT TRUE)
       AND (NOT (t ->> 'owned')::boolean OR j.attempts IS NOT DISTINCT FROM attempt)
$$;

-- One job leaving (d = -1) or entering (d = +1) a (state, result) on the pipeline's counters.
CREATE OR REPLACE FUNCTION sluice_count(p pipelines_pipeline, j pipelines_job, d integer) RETURNS pipelines_pipeline
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    p.jobs_queued := p.jobs_queued + CASE WHEN j.state = 'queued' THEN d ELSE 0 END;
    p.jobs_running := p.jobs_running + CASE WHEN j.state = 'running' THEN d ELSE 0 END;
    p.jobs_finished := p.jobs_finished + CASE WHEN j.state = 'finished' THEN d ELSE 0 END;
    p.success_count := p.success_count + CASE WHEN j.result = 'success' THEN d ELSE 0 END;
    p.warning_count := p.warning_count + CASE WHEN j.result = 'warning' THEN d ELSE 0 END;
    p.error_count := p.error_count + CASE WHEN j.result = 'error' THEN d ELSE 0 END;
    p.cancelled_count := p.cancelled_count + CASE WHEN j.result = 'cancelled' THEN d ELSE 0 END;
    p.superseded_count := p.superseded_count
        + CASE WHEN j.state = 'finished' AND coalesce(j.meta ->> 'superseded_by', '') <> '' THEN d ELSE 0 END;
    RETURN p;
END $$;

-- dag.pipeline_status and dag.pipeline_progress from the counters. The pipeline's jobs
-- are read only through the index of its running jobs (the phase label), or all of them
-- when a running job reports a row fraction (the float sum must add in Python's order).
CREATE OR REPLACE FUNCTION sluice_pipeline_view(
    p pipelines_pipeline, OUT status text, OUT percent double precision, OUT phase text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    done double precision := p.jobs_finished;
    fractional boolean;
    j record;
BEGIN
    IF p.jobs_total = 0 THEN
        status := 'success'; percent := 100.0; phase := 'done'; RETURN;
    END IF;
    IF p.jobs_finished < p.jobs_total THEN
        status := CASE WHEN p.jobs_running > 0 OR p.jobs_finished > 0 THEN 'running' ELSE 'not_started' END;
    ELSIF p.cancelled_count > 0 THEN status := 'cancelled';
    ELSIF p.error_count > 0 THEN
        status := CASE WHEN p.success_count + p.warning_count > 0 THEN 'partial' ELSE 'failed' END;
    ELSIF p.superseded_count > 0 THEN status := 'superseded';
    ELSE status := 'success';
    END IF;
    IF p.jobs_finished = p.jobs_total THEN
        percent := 100.0;
        phase := 'done';
        IF p.superseded_count > 0 THEN
            SELECT 'superseded by ' || (jb.meta ->> 'superseded_by') INTO phase FROM pipelines_job jb
             WHERE jb.pipeline_id = p.id AND jb.state = 'finished' AND coalesce(jb.meta ->> 'superseded_by', '') <> ''
             ORDER BY jb.id LIMIT 1;
        END IF;
        RETURN;
    END IF;
    IF p.jobs_running > 0 THEN
        SELECT bool_or(coalesce(jb.progress_total, 0) <> 0) INTO fractional FROM pipelines_job jb
         WHERE jb.pipeline_id = p.id AND jb.state = 'running';
        IF fractional THEN
            done := 0;
            FOR j IN SELECT jb.state, jb.progress_processed, jb.progress_total FROM pipelines_job jb
                      WHERE jb.pipeline_id = p.id ORDER BY jb.id LOOP
                done := done + CASE
                    WHEN j.state = 'finished' THEN 1.0::float8
                    WHEN j.state = 'running' AND coalesce(j.progress_total, 0) <> 0 THEN
                        greatest(0.0::float8, least(1.0::float8, j.progress_processed::float8 / j.progress_total::float8))
                    ELSE 0.0::float8 END;
            END LOOP;
        END IF;
        SELECT jb.job_type || CASE WHEN jb.det <> '' THEN ' ' || jb.det ELSE '' END
               || CASE WHEN p.jobs_running > 1 THEN ' (+' || (p.jobs_running - 1) || ' more)' ELSE '' END
               || CASE WHEN jb.phase <> '' THEN ': ' || jb.phase ELSE '' END
          INTO phase FROM pipelines_job jb
         WHERE jb.pipeline_id = p.id AND jb.state = 'running' ORDER BY jb.id LIMIT 1;
    ELSIF p.jobs_queued > 0 THEN phase := 'waiting for a worker';
    ELSE phase := 'not started';
    END IF;
    percent := least(sluice_py_round1(100.0::float8 * done / p.jobs_total), 99.9::float8);
END $$;

-- LockedPipeline.record_changes + events.append: the pipeline's status, progress and
-- counters, then the events. ``p`` carries the counters already moved by the caller.
-- The global event counter is the last row locked, and nothing but the event INSERT
-- follows it before commit (docs/ENGINE.md, "Event order").
CREATE OR REPLACE FUNCTION sluice_record(
    p pipelines_pipeline, old_status text, changed bigint[], kinds text[], counts jsonb,
    p_now timestamptz, p_rules jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v record;
    status_changed boolean;
    n integer;
    base_pseq bigint := p.last_pipeline_seq;
    last_seq bigint;
    pj jsonb;
    jobs jsonb;
    out jsonb;
    keys text[] := ARRAY(SELECT jsonb_array_elements_text(p_rules -> 'count_keys'));
    done_statuses text[] := ARRAY(SELECT jsonb_array_elements_text(p_rules -> 'done'));
BEGIN
    SELECT * INTO v FROM sluice_pipeline_view(p);
    status_changed := v.status <> old_status;
    n := cardinality(changed) + CASE WHEN status_changed THEN 1 ELSE 0 END;
    p.status := v.status;
    p.progress_percent := v.percent;
    p.phase := left(v.phase, 200);
    p.updated_at := p_now;
    p.last_pipeline_seq := base_pseq + n;
    IF (p.status = 'running' OR p.status = ANY(done_statuses)) AND p.started_at IS NULL THEN
        p.started_at := p_now;
    END IF;
    p.finished_at := CASE WHEN p.status = ANY(done_statuses) THEN coalesce(p.finished_at, p_now) END;
    UPDATE pipelines_pipeline SET
        status = p.status, progress_percent = p.progress_percent, phase = p.phase,
        jobs_finished = p.jobs_finished, jobs_queued = p.jobs_queued, jobs_running = p.jobs_running,
        success_count = p.success_count, warning_count = p.warning_count, error_count = p.error_count,
        cancelled_count = p.cancelled_count, superseded_count = p.superseded_count,
        updated_at = p.updated_at, last_pipeline_seq = p.last_pipeline_seq,
        started_at = p.started_at, finished_at = p.finished_at
     WHERE id = p.id;
    IF n = 0 THEN
        RETURN '[]'::jsonb;
    END IF;
    pj := sluice_pipeline_json(p);
    SELECT jsonb_agg(jsonb_build_object(
               'type', 'job.update', 'kind', c.kind,
               'job', sluice_job_json(j, coalesce(counts -> j.id::text, sluice_job_counts(j.meta, keys))))
           ORDER BY c.ord)
      INTO jobs
      FROM unnest(changed, kinds) WITH ORDINALITY AS c(id, kind, ord) JOIN pipelines_job j ON j.id = c.id;
    IF status_changed THEN
        jobs := coalesce(jobs, '[]'::jsonb)
            || jsonb_build_array(jsonb_build_object('type', 'pipeline.update', 'kind', 'state', 'job', NULL));
    END IF;
    -- Last: the global sequence, locked until commit (seq order = commit order).
    INSERT INTO pipelines_eventcounter (id, value) VALUES (1, n)
        ON CONFLICT (id) DO UPDATE SET value = pipelines_eventcounter.value + EXCLUDED.value
        RETURNING value INTO last_seq;
    WITH ev AS (
        SELECT e.ord, jsonb_build_object(
                   'type', e.item ->> 'type', 'seq', last_seq - n + e.ord, 'pipeline_seq', base_pseq + e.ord,
                   'pipeline_id', p.id::text, 'kind', e.item ->> 'kind', 'job', e.item -> 'job', 'pipeline', pj
               ) AS payload, (e.item -> 'job' ->> 'id')::bigint AS job_id
          FROM jsonb_array_elements(jobs) WITH ORDINALITY AS e(item, ord)
    ), ins AS (
        INSERT INTO pipelines_jobevent (seq, pipeline_seq, type, kind, year, module, payload, created_at, job_id, pipeline_id)
        SELECT (ev.payload ->> 'seq')::bigint, (ev.payload ->> 'pipeline_seq')::bigint, ev.payload ->> 'type',
               ev.payload ->> 'kind', p.year, p.module, ev.payload, clock_timestamp(), ev.job_id, p.id
          FROM ev
    )
    SELECT jsonb_agg(ev.payload ORDER BY ev.ord) INTO out FROM ev;
    RETURN out;
END $$;

-- transitions.CLAIM (p_rules -> 'claim') of a queued job in a running queue, with its
-- events. Anything else (an early delivery, a paused queue, a redelivery of a running
-- job, a finished job) answers "fallback" having written nothing: the Python path
-- (worker_side.job_claim) decides those.
CREATE OR REPLACE FUNCTION sluice_job_claim(p_job bigint, p_values jsonb, p_now timestamptz, p_rules jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    p pipelines_pipeline;
    j pipelines_job;
    t jsonb := p_rules -> 'claim';
    old_status text;
    events jsonb;
BEGIN
    -- Lock order: the pipeline row, then its job rows, then the event counter.
    SELECT * INTO p FROM pipelines_pipeline
     WHERE id = (SELECT pipeline_id FROM pipelines_job WHERE id = p_job) FOR UPDATE;
    IF NOT FOUND THEN
        RETURN '{"outcome": "fallback"}'::jsonb;
    END IF;
    SELECT * INTO j FROM pipelines_job WHERE id = p_job;
    IF NOT sluice_transition_holds(j, t, NULL)
       OR EXISTS (SELECT 1 FROM pipelines_queuestate q WHERE q.name = j.queue AND q.paused) THEN
        RETURN '{"outcome": "fallback"}'::jsonb;
    END IF;
    old_status := p.status;
    p := sluice_count(p, j, -1);
    UPDATE pipelines_job SET
        state = t ->> 'to', attempts = attempts + 1,
        started_at = (p_values ->> 'started_at')::timestamptz, heartbeat_at = (p_values ->> 'heartbeat_at')::timestamptz,
        worker = p_values ->> 'worker', celery_task_id = p_values ->> 'celery_task_id',
        status_message = p_values ->> 'status_message', status_key = p_values ->> 'status_key',
        status_params = p_values -> 'status_params', phase = p_values ->> 'phase',
        progress_processed = (p_values ->> 'progress_processed')::bigint,
        progress_total = (p_values ->> 'progress_total')::bigint,
        dispatch_when_ready = (p_values ->> 'dispatch_when_ready')::boolean
     WHERE id = p_job AND sluice_transition_holds(pipelines_job, t, NULL)
    RETURNING * INTO j;
    p := sluice_count(p, j, 1);
    events := sluice_record(p, old_status, ARRAY[p_job], ARRAY[t ->> 'event'], '{}'::jsonb, p_now, p_rules);
    RETURN jsonb_build_object('outcome', 'claimed', 'job', to_jsonb(j) - 'meta' - 'error',
                              'pipeline', to_jsonb(p), 'events', events);
END $$;

-- transitions.FINISH of the attempt that owns the job, with an OK result, then
-- transitions.PROMOTE of every downstream job whose upstream all finished OK, with
-- their events. A job this attempt no longer owns answers "refused" having written
-- nothing (the Python path returns False there too).
CREATE OR REPLACE FUNCTION sluice_job_finish(
    p_job bigint, p_attempt integer, p_values jsonb, p_merge jsonb, p_promote jsonb, p_now timestamptz, p_rules jsonb)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    p pipelines_pipeline;
    j pipelines_job;
    c pipelines_job;
    t jsonb := p_rules -> 'finish';
    tp jsonb := p_rules -> 'promote';
    ok text[] := ARRAY(SELECT jsonb_array_elements_text(p_rules -> 'ok'));
    keys text[] := ARRAY(SELECT jsonb_array_elements_text(p_rules -> 'count_keys'));
    old_status text;
    counts_before jsonb;
    changed bigint[];
    kinds text[];
    early bigint[] := '{}';
    child bigint;
    events jsonb;
BEGIN
    SELECT * INTO p FROM pipelines_pipeline
     WHERE id = (SELECT pipeline_id FROM pipelines_job WHERE id = p_job) FOR UPDATE;
    IF NOT FOUND THEN
        RETURN '{"outcome": "fallback"}'::jsonb;
    END IF;
    SELECT * INTO j FROM pipelines_job WHERE id = p_job;
    IF NOT sluice_transition_holds(j, t, p_attempt) THEN
        RETURN '{"outcome": "refused"}'::jsonb;
    END IF;
    old_status := p.status;
    counts_before := sluice_job_counts(j.meta, keys);
    p := sluice_count(p, j, -1);
    UPDATE pipelines_job SET
        state = t ->> 'to', result = p_values ->> 'result',
        status_message = p_values ->> 'status_message', status_key = p_values ->> 'status_key',
        status_params = p_values -> 'status_params', error = NULL,
        finished_at = (p_values ->> 'finished_at')::timestamptz, heartbeat_at = NULL, phase = p_values ->> 'phase',
        -- job_finish: a success reads its whole total as processed
        progress_processed = CASE WHEN p_values ->> 'result' IN ('success', 'warning') AND coalesce(progress_total, 0) <> 0
                                  THEN progress_total ELSE progress_processed END,
        meta = CASE WHEN p_merge = '{}'::jsonb THEN meta ELSE coalesce(meta, '{}'::jsonb) || p_merge END
     WHERE id = p_job AND sluice_transition_holds(pipelines_job, t, p_attempt)
    RETURNING * INTO j;
    p := sluice_count(p, j, 1);
    changed := ARRAY[p_job];
    kinds := ARRAY[t ->> 'event'];
    -- LockedPipeline.settle_downstream: promote the downstream jobs now ready, in edge order.
    FOR child IN SELECT e.from_job_id FROM pipelines_job_depends_on e WHERE e.to_job_id = p_job ORDER BY e.id LOOP
        SELECT * INTO c FROM pipelines_job WHERE id = child;
        CONTINUE WHEN NOT sluice_transition_holds(c, tp, NULL);
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM pipelines_job_depends_on e JOIN pipelines_job u ON u.id = e.to_job_id
             WHERE e.from_job_id = child AND (u.state = 'finished' AND u.result = ANY(ok)) IS NOT TRUE);
        IF c.dispatch_when_ready THEN
            early := early || child;
        END IF;
        p := sluice_count(p, c, -1);
        UPDATE pipelines_job SET
            state = tp ->> 'to', queued_at = (p_promote ->> 'queued_at')::timestamptz,
            status_message = p_promote ->> 'status_message', status_key = p_promote ->> 'status_key',
            status_params = p_promote -> 'status_params',
            dispatch_when_ready = (p_promote ->> 'dispatch_when_ready')::boolean
         WHERE id = child AND sluice_transition_holds(pipelines_job, tp, NULL)
        RETURNING * INTO c;
        p := sluice_count(p, c, 1);
        changed := changed || child;
        kinds := kinds || (tp ->> 'event');
    END LOOP;
    events := sluice_record(p, old_status, changed, kinds,
                            jsonb_build_object(p_job::text, counts_before || coalesce(
                                (SELECT jsonb_object_agg(k, p_merge -> k) FROM unnest(keys) AS k WHERE p_merge ? k),
                                '{}'::jsonb)),
                            p_now, p_rules);
    RETURN jsonb_build_object('outcome', 'finished', 'pipeline_id', p.id, 'counts_before', counts_before,
                              'early', to_jsonb(early), 'events', events);
END $$;
"""

DROP_FUNCTIONS = """
DROP FUNCTION IF EXISTS sluice_job_finish(bigint, integer, jsonb, jsonb, jsonb, timestamptz, jsonb);
DROP FUNCTION IF EXISTS sluice_job_claim(bigint, jsonb, timestamptz, jsonb);
DROP FUNCTION IF EXISTS sluice_record(pipelines_pipeline, text, bigint[], text[], jsonb, timestamptz, jsonb);
DROP FUNCTION IF EXISTS sluice_pipeline_view(pipelines_pipeline);
DROP FUNCTION IF EXISTS sluice_count(pipelines_pipeline, pipelines_job, integer);
DROP FUNCTION IF EXISTS sluice_transition_holds(pipelines_job, jsonb, integer);
DROP FUNCTION IF EXISTS sluice_pipeline_json(pipelines_pipeline);
DROP FUNCTION IF EXISTS sluice_job_json(pipelines_job, jsonb);
DROP FUNCTION IF EXISTS sluice_job_counts(jsonb, text[]);
DROP FUNCTION IF EXISTS sluice_job_percent(text, bigint, bigint);
DROP FUNCTION IF EXISTS sluice_py_float_json(double precision);
DROP FUNCTION IF EXISTS sluice_py_round1(double precision);
"""


class Migration(migrations.Migration):

    dependencies = [
        ('pipelines', '0014_rename_event_count_last_pipeline_seq'),
    ]

    operations = [
        migrations.AddField(
            model_name='pipeline',
            name='cancelled_count',
            field=models.IntegerField(default=0, verbose_name='cancelled jobs'),
        ),
        migrations.AddField(
            model_name='pipeline',
            name='jobs_queued',
            field=models.IntegerField(default=0, verbose_name='jobs queued'),
        ),
        migrations.AddField(
            model_name='pipeline',
            name='jobs_running',
            field=models.IntegerField(default=0, verbose_name='jobs running'),
        ),
        migrations.AddField(
            model_name='pipeline',
            name='success_count',
            field=models.IntegerField(default=0, verbose_name='successes'),
        ),
        migrations.AddField(
            model_name='pipeline',
            name='superseded_count',
            field=models.IntegerField(default=0, verbose_name='superseded jobs'),
        ),
        migrations.AddIndex(
            model_name='job',
            index=models.Index(condition=models.Q(('state', 'running')), fields=['pipeline', 'id'], name='job_running_in_pipeline'),
        ),
        migrations.RunSQL(BACKFILL, migrations.RunSQL.noop),
        migrations.RunSQL(FUNCTIONS, DROP_FUNCTIONS),
    ]
