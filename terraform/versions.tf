# reel in production: Pub/Sub, Cloud Storage and Cloud Run in one project.
# See docs/OPERATIONS.md for how to deploy, configure and watch it.

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 6.0, < 8.0"
    }
  }

  # State lives in a GCS bucket that is not managed here (create it once, with versioning).
  # scripts/deploy.sh passes it: terraform init -backend-config="bucket=..." -backend-config="prefix=...".
  backend "gcs" {}
}

provider "google" {
  project = var.project
  region  = var.region

  default_labels = {
    app = "reel"
  }
}

data "google_project" "this" {
  project_id = var.project
}

# The Cloud Storage service agent, which publishes the uploads bucket's notifications.
data "google_storage_project_service_account" "gcs" {
  project = var.project
}

locals {
  apis = [
    "aiplatform.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudresourcemanager.googleapis.com",
    "cloudscheduler.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
  ]
}

resource "google_project_service" "enabled" {
  for_each = toset(var.enable_apis ? local.apis : [])

  project            = var.project
  service            = each.value
  disable_on_destroy = false
}
