output "api_url" {
  description = "URL of reel-api."
  value       = google_cloud_run_v2_service.api.uri
}

output "stage_services" {
  description = "Push mode: URL of each stage service."
  value       = { for stage, service in google_cloud_run_v2_service.stage : stage => service.uri }
}

output "stage_jobs" {
  description = "Pull mode: name of each stage job."
  value       = { for stage, job in google_cloud_run_v2_job.stage : stage => job.name }
}

output "image_registry" {
  description = "Where scripts/deploy.sh pushes the images."
  value       = local.registry
}

output "images" {
  description = "The image each program runs."
  value       = local.images
}

output "buckets" {
  description = "Bucket names by role."
  value       = { for role, bucket in google_storage_bucket.bucket : role => bucket.name }
}

output "topics" {
  description = "Every topic."
  value       = sort([for topic in google_pubsub_topic.topic : topic.name])
}

output "subscriptions" {
  description = "Every subscription."
  value       = sort([for sub in google_pubsub_subscription.sub : sub.name])
}

output "service_accounts" {
  description = "The service account of each program."
  value       = { for program, account in google_service_account.program : program => account.email }
}

output "program_env" {
  description = "The environment the programs run with (for running `reel` against this deployment)."
  value       = local.common_env
}
