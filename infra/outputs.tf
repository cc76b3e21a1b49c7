# Outputs: function URLs (the Result Endpoint URL is what gateways are configured with, the admin
# API URL what the platform's UI calls), topic, subscription and bucket names, service accounts.

output "function_urls" {
  description = "HTTPS URL of each function (Cloud Run service URL), by function name."
  value       = { for name, fn in google_cloudfunctions2_function.function : name => fn.service_config[0].uri }
}

output "result_endpoint_url" {
  description = "Result Endpoint URL gateways POST signed job results to (on_job_result)."
  value       = google_cloudfunctions2_function.function["on_job_result"].service_config[0].uri
}

output "lock_status_url" {
  description = "Base URL of lock_status; the platform calls GET <url>/v1/facility-groups/{fg}/exams/{exam}/lock."
  value       = google_cloudfunctions2_function.function["lock_status"].service_config[0].uri
}

output "admin_api_url" {
  description = "Base URL of the admin API (admin_api) the platform's UI calls with end-user JWTs."
  value       = google_cloudfunctions2_function.function["admin_api"].service_config[0].uri
}

output "inbound_topics" {
  description = "Inbound topics the platform publishes to, by local.inbound key (exam_status, study_changed, ...)."
  value       = { for k, t in google_pubsub_topic.inbound : k => t.name }
}

output "inbound_push_subscriptions" {
  description = "Push subscription of each inbound topic, by local.inbound key."
  value       = { for k, s in google_pubsub_subscription.exam_status_to_function : k => s.name }
}

output "exam_status_topic" {
  description = "Topic the platform publishes exam status events to."
  value       = google_pubsub_topic.inbound["exam_status"].name
}

output "study_changed_topic" {
  description = "Topic the platform publishes study change events to."
  value       = google_pubsub_topic.inbound["study_changed"].name
}

output "patient_updated_topic" {
  description = "Topic the platform publishes patient update events to."
  value       = google_pubsub_topic.inbound["patient_updated"].name
}

output "facility_changed_topic" {
  description = "Topic the platform publishes facility group and facility changes to (facility-changed.v1)."
  value       = google_pubsub_topic.inbound["facility_changed"].name
}

output "dead_letter_topic" {
  description = "Dead-letter topic (ARCHSYNC_DEAD_LETTER_TOPIC)."
  value       = google_pubsub_topic.dead_letter["inbound"].name
}

output "dead_letter_audit_subscription" {
  description = "Pull subscription operators read parked messages from."
  value       = google_pubsub_subscription.dead_letter_audit["inbound"].name
}

output "exam_status_push_subscription" {
  description = "Push subscription feeding on_exam_status_changed."
  value       = google_pubsub_subscription.exam_status_to_function["exam_status"].name
}

output "study_changed_push_subscription" {
  description = "Push subscription feeding on_study_changed."
  value       = google_pubsub_subscription.exam_status_to_function["study_changed"].name
}

output "patient_updated_push_subscription" {
  description = "Push subscription feeding on_patient_updated."
  value       = google_pubsub_subscription.exam_status_to_function["patient_updated"].name
}

output "facility_changed_push_subscription" {
  description = "Push subscription feeding on_facility_changed."
  value       = google_pubsub_subscription.exam_status_to_function["facility_changed"].name
}

output "gateway_dead_letter_topic" {
  description = "Dead-letter topic of the gateway job subscriptions (ARCHSYNC_GATEWAY_DEAD_LETTER_TOPIC)."
  value       = google_pubsub_topic.dead_letter["gateway"].name
}

output "gateway_dead_letter_audit_subscription" {
  description = "Pull subscription operators read dead-lettered gateway job messages from."
  value       = google_pubsub_subscription.dead_letter_audit["gateway"].name
}

output "functions_source_bucket" {
  description = "Bucket holding the function deploy bundles."
  value       = local.functions_source_bucket
}

output "generated_objects_bucket" {
  description = "Bucket for generated objects."
  value       = google_storage_bucket.generated.name
}

output "key_bucket" {
  description = "Private bucket of gateway service-account keys and Result Endpoint keys (ARCHSYNC_KEY_BUCKET)."
  value       = google_storage_bucket.keys.name
}

output "function_service_accounts" {
  description = "Runtime service account email of each function."
  value       = { for name, sa in google_service_account.function : name => sa.email }
}
