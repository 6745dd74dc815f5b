"""The helpers of migration 0015's claim and finish as PL/pgSQL (issue 13).

Measured (auto_explain, nested statements): a ``LANGUAGE sql`` function that PostgreSQL
cannot inline — one with a ``FROM``, a ``SET`` clause, or called on a whole row — is
parsed and planned again at every call of the statement that calls it, and building
one claim's event cost 1.5 ms of that. PL/pgSQL keeps each statement's plan for the
session. Same bodies, same results (``tests/pipelines/test_sql_transitions.py``); the
percentage writer no longer depends on ``extra_float_digits`` (it only ever gets values
already rounded to one decimal, whose 15-digit image rounds back to themselves).
"""

import importlib

from django.db import migrations

BACKWARDS = importlib.import_module("pipelines.migrations.0015_engine_counters_sql_transitions").FUNCTIONS

FUNCTIONS = r"""
CREATE OR REPLACE FUNCTION sluice_py_float_json(x double precision) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    -- Python writes 100.0 and 66.7; x is always rounded to one decimal already.
    RETURN CASE WHEN x IS NULL THEN 'null'::jsonb ELSE to_jsonb(round(x::numeric, 1)) END;
END $$;

CREATE OR REPLACE FUNCTION sluice_job_percent(state text, processed bigint, total bigint) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN CASE WHEN state = 'finished' THEN 100.0::float8
                WHEN total IS NOT NULL AND total <> 0 THEN sluice_py_round1(least(99.9::float8,
                    100.0::float8 * greatest(0.0::float8, least(1.0::float8, processed::float8 / total::float8))))
           END;
END $$;

CREATE OR REPLACE FUNCTION sluice_job_counts(meta jsonb, count_keys text[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN jsonb_strip_nulls(coalesce(
        (SELECT jsonb_object_agg(k, meta -> k) FROM unnest(count_keys) AS k), '{}'::jsonb));
END $$;

CREATE OR REPLACE FUNCTION sluice_job_json(j pipelines_job, counts jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN jsonb_build_object(
        'id', j.id, 'job_type', j.job_type, 'det', j.det, 'queue', j.queue, 'state', j.state,
        'result', j.result, 'status_message', j.status_message, 'status_key', j.status_key,
        'status_params', coalesce(nullif(j.status_params, 'null'::jsonb), '{}'::jsonb),
        'progress', jsonb_build_object(
            'processed', j.progress_processed, 'total', j.progress_total,
            'percent', sluice_py_float_json(sluice_job_percent(j.state, j.progress_processed, j.progress_total)),
            'phase', j.phase),
        'counts', counts, 'attempts', j.attempts);
END $$;

CREATE OR REPLACE FUNCTION sluice_pipeline_json(p pipelines_pipeline) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN jsonb_build_object(
        'id', p.id::text, 'kind', p.kind, 'year', p.year, 'module', p.module, 'status', p.status,
        'progress', jsonb_build_object(
            'processed', p.jobs_finished, 'total', p.jobs_total,
            'percent', sluice_py_float_json(p.progress_percent), 'phase', p.phase),
        'jobs_total', p.jobs_total, 'jobs_finished', p.jobs_finished, 'error_count', p.error_count);
END $$;

CREATE OR REPLACE FUNCTION sluice_transition_holds(j pipelines_job, t jsonb, attempt integer) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN j.state IN (SELECT jsonb_array_elements_text(t -> 'from'))
       AND NOT EXISTS (
           SELECT 1 FROM jsonb_each(t -> 'guard') AS g
            WHERE (CASE g.key WHEN 'cancel_requested' THEN j.cancel_requested = g.value::boolean
                              WHEN 'effect_committed' THEN j.effect_committed = g.value::boolean
                   END) IS NOT TRUE)
       AND (NOT (t ->> 'owned')::boolean OR j.attempts IS NOT DISTINCT FROM attempt);
END $$;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("pipelines", "0015_engine_counters_sql_transitions"),
    ]

    # Backwards: 0015's bodies again (the same results, only slower).
    operations = [migrations.RunSQL(FUNCTIONS, BACKWARDS)]
