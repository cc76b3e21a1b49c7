# Cloud Scheduler: runs sweep_jobs on var.sweep_schedule (POST with an OIDC token of the
# scheduler service account, which may invoke sweep_jobs only; see iam.tf).

resource "google_cloud_scheduler_job" "sweep_jobs" {
  name        = "archsync-sweep-jobs"
  region      = var.region
  description = "Times out overdue archive jobs, republishes unpublished ones, finishes abandoned gateway provisioning."
  schedule    = var.sweep_schedule
  time_zone   = "Etc/UTC"
  # Wait as long as the function may run.
  attempt_deadline = "${local.functions.sweep_jobs.timeout_seconds}s"

  # No retries: the next scheduled run picks up whatever this one missed.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = google_cloudfunctions2_function.function["sweep_jobs"].service_config[0].uri

    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloudfunctions2_function.function["sweep_jobs"].service_config[0].uri
    }
  }

  depends_on = [
    google_project_service.enabled,
    google_cloud_run_v2_service_iam_member.invoker,
  ]
}
