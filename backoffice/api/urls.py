from __future__ import annotations

from django.urls import path

from backoffice.api import ops, stream, views

urlpatterns = [
    path("pipelines/", views.PipelineListView.as_view(), name="pipeline-list"),
    path("pipelines/active/", views.PipelineActiveView.as_view(), name="pipeline-active"),
    path("pipelines/<uuid:pipeline_id>/", views.PipelineDetailView.as_view(), name="pipeline-detail"),
    path("pipelines/<uuid:pipeline_id>/events/", views.PipelineEventsView.as_view(), name="pipeline-events"),
    path("pipelines/<uuid:pipeline_id>/stream/", stream.pipeline_stream, name="pipeline-stream"),
    path("pipelines/<uuid:pipeline_id>/cancel/", views.PipelineCancelView.as_view(), name="pipeline-cancel"),
    path("pipelines/<uuid:pipeline_id>/retry/", views.PipelineRetryView.as_view(), name="pipeline-retry"),
    path("jobs/", views.JobListView.as_view(), name="job-list"),
    path("jobs/stats/", ops.JobStatsView.as_view(), name="job-stats"),
    path("jobs/<int:job_id>/", views.JobDetailView.as_view(), name="job-detail"),
    path("jobs/<int:job_id>/errors.csv", views.JobErrorsCsvView.as_view(), name="job-errors-csv"),
    path("jobs/<int:job_id>/cancel/", views.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<int:job_id>/retry/", views.JobRetryView.as_view(), name="job-retry"),
    path("jobs/<int:job_id>/recover/", views.JobRecoverView.as_view(), name="job-recover"),
    path("queues/", ops.QueueListView.as_view(), name="queue-list"),
    path("queues/<str:name>/pause/", ops.QueuePauseView.as_view(), name="queue-pause"),
    path("queues/<str:name>/resume/", ops.QueueResumeView.as_view(), name="queue-resume"),
    path("workers/", ops.WorkerListView.as_view(), name="worker-list"),
    path("alerts/", ops.AlertListView.as_view(), name="alert-list"),
]
