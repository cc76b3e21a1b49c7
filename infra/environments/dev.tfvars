# Development environment. Replace the placeholders with the real project and platform identity.
# terraform -chdir=infra plan -var-file=environments/dev.tfvars

project_id  = "archsync-dev"
region      = "europe-west1"
environment = "dev"

platform_invoker_members = [
  "serviceAccount:platform-api@platform-dev.iam.gserviceaccount.com",
]
platform_publisher_members = [
  "serviceAccount:platform-api@platform-dev.iam.gserviceaccount.com",
]

max_instance_count = 3

# The remaining tunables keep their defaults (same as shared/settings.py).
