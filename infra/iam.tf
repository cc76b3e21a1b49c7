# Service accounts and IAM: one runtime identity per function with only the roles it uses (on the
# project, the key bucket, the generated-objects bucket and the study bucket), the identities that
# invoke functions (Pub/Sub push, Cloud Scheduler), the build identity, who may invoke each
# function, and the grants Pub/Sub's service agent needs. (The service agents' use of the optional
# customer-managed key is in cmek.tf, the Cloud Storage audit-log config in storage.tf.)

# --- Runtime identities of the functions --------------------------------------------------------

resource "google_service_account" "function" {
  for_each = local.functions

  account_id   = each.value.account_id
  display_name = "archsync ${each.key} function"
  description  = "Runtime identity of the ${each.key} Cloud Function."

  depends_on = [google_project_service.enabled]
}

locals {
  # Functions that create or remove gateway resources: admin_api, and sweep_jobs, which finishes
  # (rolls back / completes) gateway operations whose admin_api call died half-way.
  gateway_provisioners = toset([for name, fn in local.functions : name if fn.provisions_gateways])
}

# Project-wide grants, per local.functions[*].project_roles, plus
# local.gateway_provisioning_project_roles for the gateway provisioners:
# - roles/datastore.user (all): read/write Firestore documents.
# - roles/pubsub.publisher (on_exam_status_changed, on_study_changed, on_patient_updated,
#   on_job_result; the provisioners publish under roles/pubsub.admin): job messages go to per-gateway topics that are created at
#   runtime, outside this configuration, so there is no topic to grant on here; the same grant
#   covers the dead-letter topic (on_facility_changed publishes only there).
# - roles/iam.serviceAccountAdmin, roles/iam.serviceAccountKeyAdmin (provisioners): each gateway
#   gets a service account archsync-gw-<hex> and a JSON key, created and deleted at runtime.
#   Creating a service account is a project permission, and the accounts do not exist when this
#   configuration is applied, so there is nothing narrower to grant on. Both roles reach every
#   service account of the project (the functions' own included): keep this project to this
#   deployment and these grants to the two provisioners.
# - roles/pubsub.admin (provisioners): gateway topics and subscriptions are created at runtime
#   (topic/subscription creation is a project permission) and the provisioner sets each new
#   subscription's IAM policy; no predefined narrower role has create + setIamPolicy.
resource "google_project_iam_member" "function" {
  for_each = merge([
    for name, fn in local.functions : {
      for role in concat(fn.project_roles, fn.provisions_gateways ? local.gateway_provisioning_project_roles : []) :
      "${name} ${role}" => { name = name, role = role }
    }
  ]...)

  project = var.project_id
  role    = each.value.role
  member  = google_service_account.function[each.value.name].member
}

# --- Buckets -------------------------------------------------------------------------------------

# Provisioners store, rotate and delete gateway service-account keys and Result Endpoint keys in
# the key bucket; admin_api also reads them back for download. This bucket only.
resource "google_storage_bucket_iam_member" "key_bucket_provisioner" {
  for_each = local.gateway_provisioners

  bucket = google_storage_bucket.keys.name
  role   = "roles/storage.objectAdmin"
  member = google_service_account.function[each.key].member
}

# on_job_result verifies result signatures with the gateway's Result Endpoint key: read access to
# objects <fg>/<gateway>/result-endpoint-key only, never the service-account keys (nor listing).
resource "google_storage_bucket_iam_member" "key_bucket_result_key_reader" {
  bucket = google_storage_bucket.keys.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.function["on_job_result"].member

  condition {
    title       = "result endpoint keys only"
    description = "Objects named by shared/adapters/gcs.py result_key_object."
    expression  = "resource.name.endsWith(\"/result-endpoint-key\")"
  }
}

# Just enough to read-modify-write a bucket's IAM policy (shared/adapters/gcs.py BucketIam);
# narrower than roles/storage.admin, which would also give all object access.
resource "google_project_iam_custom_role" "bucket_iam_admin" {
  role_id     = "archsyncBucketIamAdmin"
  title       = "archsync bucket IAM admin"
  description = "Get and set the IAM policy of a bucket and of its managed folders (granted on the generated-objects and study buckets only)."
  # The managed-folder permissions: each gateway reads its prefixes through a managed folder with
  # its own IAM policy (docs/scale.md, "Bucket IAM principals"): the provisioners create the
  # folders gateways/<id>/ and <facility_group_id>/, edit their policies, and delete a gateway's own
  # folder with the gateway. The bucket permissions remain for gateways provisioned before, whose
  # conditional bindings on the bucket itself are removed when they are deleted or migrated.
  permissions = [
    "storage.buckets.get",
    "storage.buckets.getIamPolicy",
    "storage.buckets.setIamPolicy",
    "storage.managedFolders.create",
    "storage.managedFolders.delete",
    "storage.managedFolders.get",
    "storage.managedFolders.getIamPolicy",
    "storage.managedFolders.setIamPolicy",
  ]

  depends_on = [google_project_service.enabled]
}

# Provisioners add and remove each gateway's conditional objectViewer binding (prefix
# gateways/<id>/) on the generated-objects bucket. Bound on that bucket only.
resource "google_storage_bucket_iam_member" "objects_bucket_iam_admin" {
  for_each = local.gateway_provisioners

  bucket = google_storage_bucket.generated.name
  role   = google_project_iam_custom_role.bucket_iam_admin.id
  member = google_service_account.function[each.key].member
}

# Each gateway's service account will read the study files it sends from the platform's study
# bucket (var.study_bucket, the bucket of the exam events' study_storage_uri): the provisioners add
# and remove that binding at runtime, as on the generated-objects bucket, so they get the same
# custom role, bound on that bucket only. A project-level custom role can be granted only on
# resources of its own project: for a study bucket in the platform's project,
# var.study_bucket_iam_role names an equivalent role defined there (docs/deployment.md).
# Non-authoritative, like every grant on a bucket whose policy the provisioners edit.
resource "google_storage_bucket_iam_member" "study_bucket_iam_admin" {
  for_each = local.gateway_provisioners

  bucket = var.study_bucket
  role   = coalesce(var.study_bucket_iam_role, google_project_iam_custom_role.bucket_iam_admin.id)
  member = google_service_account.function[each.key].member
}

# on_study_changed writes the IOCM rejection notes (DICOM files) its jobs carry to
# gateways/<gateway id>/iocm/ in the generated-objects bucket (shared/adapters/gcs.py
# ObjectStore.put). roles/storage.objectUser rather than roles/storage.objectCreator: the upload
# is unconditional and a redelivered event uploads the same bytes to the same name again, and
# replacing an existing object needs storage.objects.delete as well as storage.objects.create,
# which objectCreator lacks (the redelivery would fail with 403 until dead-lettered). objectUser
# adds get/list/delete/update of objects, no bucket or IAM permissions. This bucket only.
resource "google_storage_bucket_iam_member" "objects_bucket_iocm_writer" {
  bucket = google_storage_bucket.generated.name
  role   = "roles/storage.objectUser"
  member = google_service_account.function["on_study_changed"].member
}

# The follow-up paths write and copy generated objects too (issue 11 items 3 and 15):
# - on_job_result: an ARCHIVE job's COMPLETED reads the instance lists of the images deferred on it
#   and writes the merged list of their push job under gateways/<gateway id>/instances/; releasing
#   a held rejection note to another gateway copies the note under that gateway's prefix;
# - sweep_jobs: releases held notes it finds ready (FollowUps.check_held), with the same copy;
# - admin_api: a retry re-routed to the destination's current gateway copies the job's note or
#   instance list under that gateway's prefix (shared/services/routing.py).
# roles/storage.objectUser for the reason given above (deterministic names are rewritten). This
# bucket only.
resource "google_storage_bucket_iam_member" "objects_bucket_followup_writer" {
  for_each = toset(["on_job_result", "sweep_jobs", "admin_api"])

  bucket = google_storage_bucket.generated.name
  role   = "roles/storage.objectUser"
  member = google_service_account.function[each.key].member
}

# --- Who may invoke which function --------------------------------------------------------------
# 2nd gen functions are Cloud Run services: invocation needs roles/run.invoker on the service
# (roles/cloudfunctions.invoker is the 1st gen role and is not enough).

resource "google_service_account" "push_invoker" {
  account_id   = "archsync-push-invoker"
  display_name = "archsync Pub/Sub push invoker"
  description  = "Identity in the OIDC token of the inbound push subscriptions (exam status, study changed, patient updated, facility changed)."

  depends_on = [google_project_service.enabled]
}

resource "google_service_account" "scheduler" {
  account_id   = "archsync-scheduler"
  display_name = "archsync Cloud Scheduler invoker"
  description  = "Identity in the OIDC token of the sweep_jobs Cloud Scheduler job."

  depends_on = [google_project_service.enabled]
}

locals {
  # Keys are static so that for_each is known at plan time (service account emails are not).
  # "<function> push-invoker" for the function of each local.inbound entry (the existing key
  # "on_exam_status_changed push-invoker" is unchanged, so that grant stays where it is).
  function_invokers = merge(
    { for pair in local.inbound : "${pair.function} push-invoker" => { name = pair.function, member = google_service_account.push_invoker.member } },
    {
      "sweep_jobs scheduler" = { name = "sweep_jobs", member = google_service_account.scheduler.member }
    },
    { for m in var.platform_invoker_members : "lock_status ${m}" => { name = "lock_status", member = m } },
  )
}

resource "google_cloud_run_v2_service_iam_member" "invoker" {
  for_each = local.function_invokers

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.function[each.value.name].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value.member
}

# The Result Endpoint is public on purpose: gateways are not Google identities. Each request is
# authenticated by the function itself with the gateway's HMAC signature (shared/signing.py:
# per-gateway key, timestamp within ARCHSYNC_SIGNATURE_MAX_SKEW_SECONDS), checked before the body
# is parsed or anything is read besides the gateway's key.
#
# No checkov suppression here or on admin_api_invoker: CKV_GCP_102 (public Cloud Run service)
# covers only the v1 google_cloud_run_service_iam_* resources, so checkov runs no check on these
# v2 grants and a skip comment would suppress nothing (tests/unit/test_checkov.py requires every
# skip to take effect).
resource "google_cloud_run_v2_service_iam_member" "result_endpoint_public" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.function["on_job_result"].service_config[0].service
  role     = "roles/run.invoker"
  member   = "allUsers"
}

# The admin API is called by the platform's UI on behalf of end users, who are not Google
# identities: every request carries the user's JWT from the platform's IdP, which the function
# verifies itself (shared/auth.py: signature against ARCHSYNC_ADMIN_JWT_PUBLIC_KEYS, expiry,
# issuer, audience) before anything else; the token's facility groups bound what the caller sees.
# Public by default; behind an API gateway, var.admin_invoker_members names the gateway's
# service account instead.
resource "google_cloud_run_v2_service_iam_member" "admin_api_invoker" {
  for_each = toset(var.admin_invoker_members)

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.function["admin_api"].service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}

# --- Pub/Sub ------------------------------------------------------------------------------------

# Dead-lettering: Pub/Sub's service agent republishes undeliverable messages to the dead-letter
# topics (local.dead_letter) and must be able to ack them on the source subscription: below for
# the inbound push subscriptions; on each gateway subscription the provisioning code adds the
# agent's subscriber binding at runtime (ARCHSYNC_PUBSUB_SERVICE_AGENT).
resource "google_pubsub_topic_iam_member" "dead_letter_pubsub_agent" {
  for_each = local.dead_letter

  topic  = google_pubsub_topic.dead_letter[each.key].id
  role   = "roles/pubsub.publisher"
  member = local.pubsub_service_agent
}

moved {
  from = google_pubsub_topic_iam_member.dead_letter_pubsub_agent
  to   = google_pubsub_topic_iam_member.dead_letter_pubsub_agent["inbound"]
}

moved {
  from = google_pubsub_topic_iam_member.gateway_dead_letter_pubsub_agent
  to   = google_pubsub_topic_iam_member.dead_letter_pubsub_agent["gateway"]
}

# Acking dead-lettered messages on each inbound push subscription.
resource "google_pubsub_subscription_iam_member" "inbound_pubsub_agent" {
  for_each = local.inbound

  subscription = google_pubsub_subscription.exam_status_to_function[each.key].id
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}

moved {
  from = google_pubsub_subscription_iam_member.exam_status_pubsub_agent
  to   = google_pubsub_subscription_iam_member.inbound_pubsub_agent["exam_status"]
}

# The service agent mints the push subscription's OIDC tokens. Only needed explicitly in projects
# that enabled Pub/Sub before 2021-04-08, harmless elsewhere; granted on this one account only.
resource "google_service_account_iam_member" "push_invoker_token_creator" {
  service_account_id = google_service_account.push_invoker.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = local.pubsub_service_agent
}

# The platform publishes to every inbound topic.
#
# Keys: "<inbound key> <member>", except for exam_status, whose instances keep the bare member as
# key. They were the instances of google_pubsub_topic_iam_member.exam_status_platform_publisher
# (keyed by member), moved here as a whole below: a moved block cannot name per-member keys,
# which come from a variable, and replacing an *_iam_member with one for the same binding under
# another address can leave the binding removed (the old instance's destroy may run last).
resource "google_pubsub_topic_iam_member" "inbound_platform_publisher" {
  for_each = merge([
    for k, pair in local.inbound : {
      for m in var.platform_publisher_members :
      (k == "exam_status" ? m : "${k} ${m}") => { inbound = k, member = m }
    }
  ]...)

  topic  = google_pubsub_topic.inbound[each.value.inbound].id
  role   = "roles/pubsub.publisher"
  member = each.value.member
}

moved {
  from = google_pubsub_topic_iam_member.exam_status_platform_publisher
  to   = google_pubsub_topic_iam_member.inbound_platform_publisher
}

# --- Build identity -----------------------------------------------------------------------------
# Cloud Build builds the function images as this account instead of the project default (since
# 2024 the Compute Engine default account, which has no roles in new organizations and Editor in
# old projects). Roles per "Custom service account for Cloud Build" in the Cloud Functions docs.

resource "google_service_account" "build" {
  account_id   = "archsync-fn-build"
  display_name = "archsync function build"
  description  = "Cloud Build identity for building the Archive Synchronization functions."

  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_member" "build_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.build.member
}

# Cloud Functions copies each bundle into its own gcf-v2-sources-<number>-<region> bucket (created
# on first deploy) and the build reads it from there. The condition keeps every other bucket, the
# generated objects in particular, out of reach.
resource "google_project_iam_member" "build_sources" {
  project = var.project_id
  role    = "roles/storage.objectViewer"
  member  = google_service_account.build.member

  condition {
    title      = "function sources only"
    expression = "resource.name.startsWith(\"projects/_/buckets/gcf-v2-sources-${data.google_project.this.number}-${var.region}\")"
  }
}

# In case the build reads the bundle from where it was uploaded.
resource "google_storage_bucket_iam_member" "build_source_reader" {
  bucket = local.functions_source_bucket
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}

resource "google_artifact_registry_repository_iam_member" "build_writer" {
  location   = google_artifact_registry_repository.functions.location
  repository = google_artifact_registry_repository.functions.name
  role       = "roles/artifactregistry.writer"
  member     = google_service_account.build.member
}
