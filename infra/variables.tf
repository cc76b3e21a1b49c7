# Input variables. Environment-specific values live in environments/<environment>.tfvars.
#
# The tunables (*_seconds, sweep_batch_size) reach every function as the ARCHSYNC_* environment
# variables read by shared/settings.py (Settings.from_env); their defaults equal the defaults there.

variable "project_id" {
  description = "Google Cloud project that hosts this environment (one project per environment)."
  type        = string
}

variable "region" {
  description = "Region of the functions, Cloud Scheduler job, buckets and Artifact Registry repository."
  type        = string
  default     = "europe-west1"
}

variable "firestore_location_id" {
  description = "Location of the Firestore database (a region or a multi-region such as \"eur3\"). Defaults to var.region. Cannot be changed once the database exists."
  type        = string
  default     = null
}

variable "environment" {
  description = "Environment name (dev, prod, ...): used in labels and bucket names."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,14}$", var.environment))
    error_message = "environment must be 2-15 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "platform_invoker_members" {
  description = "IAM members allowed to call the lock_status function, e.g. [\"serviceAccount:platform-api@platform-project.iam.gserviceaccount.com\"]."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.platform_invoker_members : !contains(["allUsers", "allAuthenticatedUsers"], m)])
    error_message = "lock_status is for the platform only: allUsers and allAuthenticatedUsers are not allowed."
  }
}

variable "platform_publisher_members" {
  description = "IAM members allowed to publish to the inbound topics (exam status, study changed, patient updated; the platform's service account). Empty if publishing rights are granted elsewhere."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.platform_publisher_members : !contains(["allUsers", "allAuthenticatedUsers"], m)])
    error_message = "allUsers and allAuthenticatedUsers may not publish to the inbound topics."
  }
}

variable "functions_source_bucket" {
  description = "Existing bucket to upload the function bundles to. null creates a private one named <project>-archsync-fn-source-<environment>."
  type        = string
  default     = null
}

variable "bundles_dir" {
  description = "Directory holding the deploy bundles <function>.zip built by scripts/build_bundles.py. null means build/bundles at the repository root."
  type        = string
  default     = null
}

variable "max_instance_count" {
  description = "Maximum number of instances of each request-serving function (sweep_jobs is capped at 1)."
  type        = number
  default     = 10

  validation {
    condition     = var.max_instance_count >= 1
    error_message = "max_instance_count must be at least 1."
  }
}

variable "dispatch_grace_seconds" {
  description = "ARCHSYNC_DISPATCH_GRACE_SECONDS: extra time in a queued job's timeout window for a gateway that pulls it late."
  type        = number
  default     = 1800
}

variable "attempt_allowance_seconds" {
  description = "ARCHSYNC_ATTEMPT_ALLOWANCE_SECONDS: time allowed for one whole-study send attempt by a gateway."
  type        = number
  default     = 900
}

variable "max_result_window_seconds" {
  description = "ARCHSYNC_MAX_RESULT_WINDOW_SECONDS: longest a started job's result window may be extended by gateway progress reports, from its start (above the agent's Pub/Sub lease maximum)."
  type        = number
  default     = 43200
}

variable "signature_max_skew_seconds" {
  description = "ARCHSYNC_SIGNATURE_MAX_SKEW_SECONDS: accepted clock skew of the timestamp of a signed job result."
  type        = number
  default     = 300
}

variable "publish_lease_seconds" {
  description = "ARCHSYNC_PUBLISH_LEASE_SECONDS: publish lease a caller holds on a job before another caller (a redelivery or the sweep) may publish it."
  type        = number
  default     = 60
}

variable "sweep_batch_size" {
  description = "ARCHSYNC_SWEEP_BATCH_SIZE: jobs examined per query by one sweep."
  type        = number
  default     = 200
}

variable "sweep_schedule" {
  description = "Cron schedule (UTC) of the sweep_jobs Cloud Scheduler job."
  type        = string
  default     = "*/5 * * * *"
}

variable "generated_objects_retention_days" {
  description = "Days after which objects in the generated-objects bucket are deleted."
  type        = number
  default     = 365

  validation {
    condition     = var.generated_objects_retention_days >= 1
    error_message = "generated_objects_retention_days must be at least 1."
  }
}

variable "provisioning_lease_seconds" {
  description = "ARCHSYNC_PROVISIONING_LEASE_SECONDS: lease on a gateway provisioning log; when it runs out, sweep_jobs finishes (rolls back) the operation. Must exceed the admin_api function's timeout."
  type        = number
  default     = 300
}

variable "gateway_identity_projects" {
  description = "ARCHSYNC_GATEWAY_IDENTITY_PROJECTS: existing projects that hold the gateways' service accounts (the identity pool, docs/scale.md): a project holds at most 100 service accounts by default, so 5,000 gateways need about 56 at 90 % fill. Each new gateway's account goes to a project chosen from a hash of its id, skipping full ones. The gateway provisioners get roles/iam.serviceAccountAdmin and roles/iam.serviceAccountKeyAdmin there, and the IAM and Pub/Sub APIs are enabled. Empty: this project (at most ~90 gateways). Only append: a removed project still holds its gateways' accounts."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for p in var.gateway_identity_projects : can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", p))]) && length(distinct(var.gateway_identity_projects)) == length(var.gateway_identity_projects)
    error_message = "gateway_identity_projects must be distinct project ids (6-30 lowercase letters, digits or hyphens)."
  }
}

variable "result_key_grace_seconds" {
  description = "ARCHSYNC_RESULT_KEY_GRACE_SECONDS: after a Result Endpoint key rotation, how long the previous key still verifies (both keys are accepted meanwhile)."
  type        = number
  default     = 86400
}

variable "admin_invoker_members" {
  description = "IAM members allowed to invoke the admin_api function. Callers are authenticated by the end user's JWT, verified in the function, so the default is [\"allUsers\"]; a deployment behind an API gateway should set the gateway's service account instead (\"serviceAccount:...\")."
  type        = list(string)
  default     = ["allUsers"]
}

variable "admin_jwt_public_keys_pem" {
  description = "ARCHSYNC_ADMIN_JWT_PUBLIC_KEYS: PEM public key(s) (\"-----BEGIN PUBLIC KEY-----\", RS256 or ES256) of the platform's identity provider that signs the admin API's JWTs; several keys concatenated during a rotation."
  type        = string

  validation {
    condition     = strcontains(var.admin_jwt_public_keys_pem, "-----BEGIN PUBLIC KEY-----")
    error_message = "admin_jwt_public_keys_pem must hold at least one PEM public key (-----BEGIN PUBLIC KEY-----)."
  }
}

variable "admin_jwt_audience" {
  description = "ARCHSYNC_ADMIN_JWT_AUDIENCE: required `aud` of the admin API's JWTs."
  type        = string

  validation {
    condition     = var.admin_jwt_audience != ""
    error_message = "admin_jwt_audience must not be empty."
  }
}

variable "admin_jwt_issuer" {
  description = "ARCHSYNC_ADMIN_JWT_ISSUER: required `iss` of the admin API's JWTs (the platform's identity provider)."
  type        = string

  validation {
    condition     = var.admin_jwt_issuer != ""
    error_message = "admin_jwt_issuer must not be empty."
  }
}

variable "study_bucket" {
  description = "Name (without gs://) of the platform's study files bucket: the bucket of the exam events' study_storage_uri, which the gateways read the studies they send from. The gateway provisioners (admin_api, sweep_jobs) may get and set its IAM policy (role var.study_bucket_iam_role), to grant and revoke each gateway service account's read access."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$", var.study_bucket))
    error_message = "study_bucket must be a bucket name (lowercase letters, digits, '.', '_', '-'), without gs://."
  }
}

variable "study_bucket_iam_role" {
  description = "Role granted to the gateway provisioners on var.study_bucket. null: this project's custom role archsyncBucketIamAdmin (storage.buckets.get, getIamPolicy, setIamPolicy and storage.managedFolders.create, delete, get, getIamPolicy, setIamPolicy), which can be granted only if the study bucket is in this project. For a bucket in another project, a custom role with the same permissions defined there or in the organization: projects/<project>/roles/<id> or organizations/<org>/roles/<id>."
  type        = string
  default     = null

  validation {
    condition     = var.study_bucket_iam_role == null || can(regex("^(projects|organizations)/[^/]+/roles/[A-Za-z0-9_.]+$", var.study_bucket_iam_role))
    error_message = "study_bucket_iam_role must be null or a custom role id: projects/<project>/roles/<id> or organizations/<org>/roles/<id>."
  }
}

variable "kms_key_name" {
  description = "Optional Cloud KMS key for customer-managed encryption (CMEK) of the Pub/Sub topics, the Artifact Registry repository and the buckets declared here: projects/<project>/locations/<var.region>/keyRings/<ring>/cryptoKeys/<key>. The Pub/Sub, Artifact Registry and Cloud Storage service agents get encrypter/decrypter on it. null keeps Google-managed encryption. Changing it replaces the Artifact Registry repository."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_name == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$", var.kms_key_name))
    error_message = "kms_key_name must be null or projects/<project>/locations/<location>/keyRings/<ring>/cryptoKeys/<key>."
  }
}

# The Gateway Management console (admin_api, /console/; docs/console.md): OAuth 2.0 authorization
# code + PKCE against the platform's identity provider, whose access tokens are the admin API's JWTs.
variable "console_authorize_url" {
  description = "ARCHSYNC_CONSOLE_AUTHORIZE_URL: the platform identity provider's OAuth 2.0 authorization endpoint (https). Empty: the console shows that sign-in is not configured."
  type        = string
  default     = ""

  validation {
    condition     = var.console_authorize_url == "" || startswith(var.console_authorize_url, "https://")
    error_message = "console_authorize_url must be an https:// URL (or empty)."
  }
}

variable "console_token_url" {
  description = "ARCHSYNC_CONSOLE_TOKEN_URL: the identity provider's OAuth 2.0 token endpoint (https); it must allow CORS from the admin_api origin. Its origin is added to the console's CSP connect-src."
  type        = string
  default     = ""

  validation {
    condition     = var.console_token_url == "" || startswith(var.console_token_url, "https://")
    error_message = "console_token_url must be an https:// URL (or empty)."
  }
}

variable "console_client_id" {
  description = "ARCHSYNC_CONSOLE_CLIENT_ID: the console's client id at the identity provider (a public client: PKCE, no secret; redirect URI <admin_api URL>/console/)."
  type        = string
  default     = ""
}

variable "console_scope" {
  description = "ARCHSYNC_CONSOLE_SCOPE: scopes the console asks for; the access token must be the admin API's JWT (aud = admin_jwt_audience, facility_groups claim)."
  type        = string
  default     = "openid"
}

# --- Monitoring (issue 15; docs/operations.md) ---------------------------------------------------

variable "gateway_silent_seconds" {
  description = "ARCHSYNC_GATEWAY_SILENT_SECONDS: a gateway with no contact (signed result or heartbeat) for longer than this is \"silent\" in the Gateways table, and sweep_jobs reports it when published jobs have waited as long for it (alert gateway_silent). Keep it above 2 heartbeat intervals of the agents (agent default 300 s)."
  type        = number
  default     = 900

  validation {
    condition     = var.gateway_silent_seconds >= 120
    error_message = "gateway_silent_seconds must be at least 120 (contacts are recorded at most once a minute)."
  }
}

variable "lock_overdue_seconds" {
  description = "ARCHSYNC_LOCK_OVERDUE_SECONDS: sweep_jobs reports every order lock held longer than this (alert lock_held_too_long)."
  type        = number
  default     = 7200
}

variable "alert_notification_channels" {
  description = "Ids of the Cloud Monitoring notification channels every alert policy notifies (\"projects/<project>/notificationChannels/<id>\"; create them in the console or with google_monitoring_notification_channel). Empty: incidents open in the console only."
  type        = list(string)
  default     = []
}

variable "alert_failed_jobs_threshold" {
  description = "Alert failed_jobs: more than this many jobs of one destination FAILED (gateway-reported or undeliverable, not timed out) within 10 minutes."
  type        = number
  default     = 5
}

variable "alert_timed_out_jobs_threshold" {
  description = "Alert timed_out_jobs: more than this many jobs of one destination timed out (archive state UNKNOWN) within 10 minutes."
  type        = number
  default     = 0
}
