# Production environment. Replace the placeholders with the real project and platform identity.
# terraform -chdir=infra plan -var-file=environments/prod.tfvars

project_id  = "archsync-prod"
region      = "europe-west1"
environment = "prod"

platform_invoker_members = [
  "serviceAccount:platform-api@platform-prod.iam.gserviceaccount.com",
]
platform_publisher_members = [
  "serviceAccount:platform-api@platform-prod.iam.gserviceaccount.com",
]

max_instance_count = 20

dispatch_grace_seconds     = 1800
attempt_allowance_seconds  = 900
signature_max_skew_seconds = 300
publish_lease_seconds      = 60
sweep_schedule             = "*/5 * * * *"

generated_objects_retention_days = 365
