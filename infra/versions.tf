# Terraform and provider version constraints.
terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source = "hashicorp/google"
      # Exact: tests/unit/test_tf_schema.py checks every block of infra/ against this version's
      # schema (infra/schema/google-<version>.json, from scripts/extract_tf_schema.py), and there
      # is no committed lock file. 6.50.0: the newest 6.x (the major "~> 6.0" allowed) that
      # cdktn-provider-google binds (16.13.0 to 18.0.0). Change both together
      # (docs/deployment.md, "Provider schema").
      version = "6.50.0"
    }
  }
}
