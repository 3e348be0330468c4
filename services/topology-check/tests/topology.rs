//! terraform/ declares exactly the topology `reel setup` creates (Topology::standard),
//! in push and in pull mode and with another prefix; the Pub/Sub and Cloud Storage
//! service agents may do what dead-lettering and notifications need; each program may
//! do what its code does and no more; the programs get the settings the code reads.

use hcl::Value;
use reel_events::Stage;
use reel_runtime::topology::{Queue, SubscriptionSpec, Topology, DEFAULT_PREFIX};
use reel_runtime::Settings;
use reel_topology_check::module::{Evaluated, Evaluator, Instance, Module, PROJECT_NUMBER};
use reel_topology_check::{
    container_args, container_env, differences, evaluate, expected, grants, terraform_dir, Deployment, Grant,
    TEST_PROJECT,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

fn module() -> Module {
    Module::load(&terraform_dir()).unwrap_or_else(|e| panic!("{e}"))
}

fn deploy<'m>(module: &'m Module, values: &[(&str, Value)]) -> Deployment<'m> {
    evaluate(module, values).unwrap_or_else(|e| panic!("evaluating terraform/: {e}"))
}

fn service_uri(prefix: &str, service: &str) -> String {
    // The evaluator's stand-in for google_cloud_run_v2_service.uri.
    format!("https://{prefix}{service}-stand-in.a.run.app")
}

fn assert_same(topology: &Topology, deployment: &Deployment) {
    let prefix = deployment.prefix.clone();
    let endpoint = move |service: &str| service_uri(&prefix, service);
    let want = expected(topology, deployment.push.then_some(&endpoint as &dyn Fn(&str) -> String));
    let diff = differences(&want, &deployment.declared);
    assert!(
        diff.is_empty(),
        "terraform/ and Topology::standard({:?}) differ ({} mode):\n  {}",
        topology.prefix,
        if deployment.push { "push" } else { "pull" },
        diff.join("\n  ")
    );
}

#[test]
fn the_prefix_variable_defaults_to_the_codes_prefix() {
    let module = module();
    let deployment = deploy(&module, &[]);
    assert_eq!(deployment.prefix, DEFAULT_PREFIX);
    assert!(deployment.push, "push mode is the default");
}

#[test]
fn push_mode_declares_exactly_the_standard_topology() {
    let module = module();
    let deployment = deploy(&module, &[]);
    assert_same(&Topology::standard(DEFAULT_PREFIX), &deployment);
}

#[test]
fn pull_mode_declares_exactly_the_standard_topology() {
    let module = module();
    let deployment = deploy(&module, &[("delivery_mode", Value::from("pull"))]);
    assert!(!deployment.push);
    assert_same(&Topology::standard(DEFAULT_PREFIX), &deployment);
    // The stages' subscriptions get the exactly-once delivery the code asks for.
    let topology = Topology::standard(DEFAULT_PREFIX);
    for spec in topology.subscriptions.iter().filter(|s| s.exactly_once) {
        assert!(deployment.declared.subscriptions[&spec.name].exactly_once, "{} lacks exactly-once", spec.name);
    }
}

#[test]
fn names_follow_the_prefix_variable() {
    let module = module();
    for mode in ["push", "pull"] {
        let deployment =
            deploy(&module, &[("topic_prefix", Value::from("stg-reel-")), ("delivery_mode", Value::from(mode))]);
        assert_same(&Topology::standard("stg-reel-"), &deployment);
    }
}

#[test]
fn the_event_log_keeps_31_days() {
    let module = module();
    let deployment = deploy(&module, &[]);
    let events = &deployment.declared.topics["reel-events"];
    assert_eq!(events.retention, Some(Duration::from_secs(31 * 24 * 3600)));
}

#[test]
fn no_subscription_expires_for_inactivity() {
    // Pub/Sub deletes a subscription after 31 days without activity unless told not to;
    // a quiet dead-letter queue must survive.
    let module = module();
    let deployment = deploy(&module, &[]);
    for sub in &deployment.subscription_instances {
        let policy = sub
            .body
            .block("expiration_policy")
            .unwrap()
            .unwrap_or_else(|| panic!("{}: no expiration_policy", sub.address));
        assert_eq!(
            policy.string("ttl").unwrap().as_deref(),
            Some(""),
            "{}: expiration_policy.ttl must be \"\"",
            sub.address
        );
    }
}

// ---------------------------------------------------------------------------------------
// The comparison notices a subscription added to or removed from either side.

fn extra_subscription(prefix: &str) -> SubscriptionSpec {
    let mut spec = Topology::standard(prefix).subscriptions[0].clone();
    spec.name = format!("{prefix}extra");
    spec
}

#[test]
fn a_subscription_only_in_the_code_is_a_difference() {
    let module = module();
    let deployment = deploy(&module, &[("delivery_mode", Value::from("pull"))]);
    let mut topology = Topology::standard(DEFAULT_PREFIX);
    topology.subscriptions.push(extra_subscription(DEFAULT_PREFIX));
    let diff = differences(&expected(&topology, None), &deployment.declared);
    assert_eq!(diff, vec!["subscription reel-extra: in the code, not in terraform".to_string()]);

    let mut topology = Topology::standard(DEFAULT_PREFIX);
    let removed = topology.subscriptions.remove(3).name;
    let diff = differences(&expected(&topology, None), &deployment.declared);
    assert_eq!(diff, vec![format!("subscription {removed}: in terraform, not in the code")]);
}

#[test]
fn a_subscription_only_in_terraform_is_a_difference() {
    let module = module();
    let deployment = deploy(&module, &[("delivery_mode", Value::from("pull"))]);
    let want = expected(&Topology::standard(DEFAULT_PREFIX), None);

    let mut declared = deployment.declared.clone();
    let copy = declared.subscriptions["reel-stitch"].clone();
    declared.subscriptions.insert("reel-stitch-huge".into(), copy);
    assert_eq!(
        differences(&want, &declared),
        vec!["subscription reel-stitch-huge: in terraform, not in the code".to_string()]
    );

    let mut declared = deployment.declared.clone();
    declared.subscriptions.remove("reel-validate-gcs");
    assert_eq!(
        differences(&want, &declared),
        vec!["subscription reel-validate-gcs: in the code, not in terraform".to_string()]
    );

    let mut declared = deployment.declared.clone();
    declared.subscriptions.get_mut("reel-stitch").unwrap().ack_deadline = Duration::from_secs(60);
    declared.subscriptions.get_mut("reel-upload").unwrap().dead_letter_topic = Some("reel-stitch-dead-letter".into());
    assert_eq!(differences(&want, &declared).len(), 2, "{:?}", differences(&want, &declared));
}

// ---------------------------------------------------------------------------------------
// IAM.

fn all_grants(deployment: &mut Deployment) -> Vec<Grant> {
    grants(&mut deployment.evaluator).unwrap_or_else(|e| panic!("{e}"))
}

fn has(grants: &[Grant], kind: &str, on: &str, role: &str, member: &str) -> bool {
    grants.iter().any(|g| g.kind == kind && g.on == on && g.role == role && g.member == member)
}

#[test]
fn the_pubsub_service_agent_can_dead_letter_every_stage_subscription() {
    let module = module();
    for mode in ["push", "pull"] {
        let mut deployment = deploy(&module, &[("delivery_mode", Value::from(mode))]);
        let grants = all_grants(&mut deployment);
        let agent = format!("serviceAccount:service-{PROJECT_NUMBER}@gcp-sa-pubsub.iam.gserviceaccount.com");
        let topology = Topology::standard(DEFAULT_PREFIX);
        let mut dead_letter_topics = BTreeSet::new();
        for spec in &topology.subscriptions {
            let Some(dlq) = &spec.dead_letter_topic else {
                continue;
            };
            assert!(
                has(&grants, "subscription", &spec.name, "roles/pubsub.subscriber", &agent),
                "agent cannot ack {} to dead-letter it",
                spec.name
            );
            dead_letter_topics.insert(dlq.clone());
        }
        for dlq in dead_letter_topics {
            assert!(has(&grants, "topic", &dlq, "roles/pubsub.publisher", &agent), "agent cannot publish to {dlq}");
        }
    }
}

/// `serviceAccount:EMAIL` → program key (`validate`, …, `api`).
fn program_members(deployment: &Deployment) -> BTreeMap<String, String> {
    deployment
        .service_accounts
        .iter()
        .filter(|sa| sa.resource == "program")
        .map(|sa| {
            let account = sa.body.string("account_id").unwrap().unwrap();
            let program = sa.key.as_ref().and_then(|k| k.as_str()).unwrap().to_string();
            (format!("serviceAccount:{account}@{TEST_PROJECT}.iam.gserviceaccount.com"), program)
        })
        .collect()
}

fn granted(grants: &[Grant], member: &str, kind: &str, role: &str) -> BTreeSet<String> {
    grants.iter().filter(|g| g.member == member && g.kind == kind && g.role == role).map(|g| g.on.clone()).collect()
}

#[test]
fn each_program_reads_and_publishes_exactly_what_its_code_does() {
    let module = module();
    let mut deployment = deploy(&module, &[]);
    let grants = all_grants(&mut deployment);
    let members = program_members(&deployment);
    let topology = Topology::standard(DEFAULT_PREFIX);
    let names = topology.names();
    let member_of = |program: &str| members.iter().find(|(_, p)| *p == program).map(|(m, _)| m.clone()).unwrap();
    let set = |items: Vec<String>| items.into_iter().collect::<BTreeSet<String>>();

    for stage in Stage::EVERY {
        let member = member_of(stage.as_str());
        // The subscriptions that feed the stage: those that dead-letter to the topic of
        // one of its queues (stitch's: its own and the encode items').
        let queues: Vec<Queue> = Queue::ALL.into_iter().filter(|q| q.stage() == stage).collect();
        let dead_letter_topics: Vec<String> = queues.iter().map(|q| names.dead_letter_topic(*q)).collect();
        let feeds = set(topology
            .subscriptions
            .iter()
            .filter(|s| s.dead_letter_topic.as_ref().is_some_and(|t| dead_letter_topics.contains(t)))
            .map(|s| s.name.clone())
            .collect());
        assert_eq!(granted(&grants, &member, "subscription", "roles/pubsub.subscriber"), feeds, "{stage} subscriber");
        assert_eq!(granted(&grants, &member, "subscription", "roles/pubsub.viewer"), feeds, "{stage} viewer");
        // The worker publishes every event to the log and internal ones to the next
        // stage's work topic (worker::publish_event), and dead-letters to its own topic.
        let mut publishes = vec![names.events()];
        publishes.extend(dead_letter_topics);
        if let Some(next) = stage.later().first() {
            publishes.push(names.work_topic(*next));
        }
        // Generate fans out to its per-prompt items, and asks for the reel of the clips.
        if stage == Stage::Generate {
            publishes.extend([names.generate_clips_topic(), names.requests()]);
        }
        // A stage with a queue of its own besides its work fans out to it (stitch's encodes).
        publishes.extend(queues.iter().filter(|q| **q != Queue::Stage(stage)).map(|q| names.queue_topic(*q)));
        // Work that ran out of resources goes to the stage's larger tier (stitch's).
        publishes.extend(names.larger_tier(stage));
        assert_eq!(granted(&grants, &member, "topic", "roles/pubsub.publisher"), set(publishes), "{stage} publisher");
    }
    let api = member_of("api");
    assert_eq!(granted(&grants, &api, "subscription", "roles/pubsub.subscriber"), set(vec![names.api_subscription()]));
    assert_eq!(granted(&grants, &api, "topic", "roles/pubsub.publisher"), set(vec![names.requests(), names.events()]));

    // Nothing else: no other roles for the programs, and no project-wide grants at all.
    for grant in grants.iter().filter(|g| members.contains_key(&g.member)) {
        assert!(
            [
                "roles/pubsub.subscriber",
                "roles/pubsub.viewer",
                "roles/pubsub.publisher",
                "roles/storage.objectViewer",
                "roles/storage.objectUser"
            ]
            .contains(&grant.role.as_str()),
            "{grant:?}"
        );
    }
    // One project-wide grant: Vertex AI has no narrower one, and only generate calls it.
    for resource in module.resources() {
        assert!(
            !resource.ty.starts_with("google_project_iam")
                || (resource.ty == "google_project_iam_member" && resource.name == "generate_vertex_ai"),
            "project-wide IAM in {}: {}.{}",
            resource.file.display(),
            resource.ty,
            resource.name
        );
    }
    let vertex = deployment.evaluator.instances("google_project_iam_member").unwrap();
    assert_eq!(vertex.len(), 1);
    assert_eq!(vertex[0].body.string("role").unwrap().as_deref(), Some("roles/aiplatform.user"));
    assert_eq!(vertex[0].body.string("member").unwrap(), Some(member_of("generate")));
}

#[test]
fn programs_touch_only_their_buckets() {
    let module = module();
    let mut deployment = deploy(&module, &[]);
    let grants = all_grants(&mut deployment);
    let members = program_members(&deployment);
    let bucket = |role: &str| format!("{TEST_PROJECT}-reel-{role}");
    let writers = |on: &str| -> BTreeSet<String> {
        grants
            .iter()
            .filter(|g| g.kind == "bucket" && g.on == on && g.role == "roles/storage.objectUser")
            .filter_map(|g| members.get(&g.member).cloned())
            .collect()
    };
    assert!(writers(&bucket("uploads")).is_empty(), "no program writes the uploads bucket");
    assert_eq!(writers(&bucket("outputs")), BTreeSet::from(["upload".to_string()]));
    let all: BTreeSet<String> = members.values().cloned().collect();
    assert_eq!(writers(&bucket("work")), all, "every program works in the work bucket (locks, markers, workspaces)");
    for grant in grants.iter().filter(|g| g.kind == "bucket") {
        assert!(grant.role.starts_with("roles/storage.object"), "bucket-level admin role: {grant:?}");
    }
}

#[test]
fn manifests_on_the_uploads_bucket_notify_the_gcs_topic() {
    let module = module();
    let mut deployment = deploy(&module, &[]);
    deployment.evaluator.instances("google_storage_bucket").unwrap();
    let notifications = deployment.evaluator.instances("google_storage_notification").unwrap();
    assert_eq!(notifications.len(), 1);
    let n = &notifications[0].body;
    assert_eq!(n.string("bucket").unwrap().unwrap(), format!("{TEST_PROJECT}-reel-uploads"));
    assert_eq!(n.string("topic").unwrap().unwrap(), format!("projects/{TEST_PROJECT}/topics/reel-gcs-notifications"));
    assert_eq!(n.string("payload_format").unwrap().unwrap(), "JSON_API_V1");
    assert_eq!(n.string("object_name_prefix").unwrap().unwrap(), "manifests/");
    assert_eq!(n.attr("event_types").unwrap(), Value::from(vec!["OBJECT_FINALIZE"]));
    let grants = all_grants(&mut deployment);
    let gcs_agent = format!("serviceAccount:service-{PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com");
    assert!(has(&grants, "topic", "reel-gcs-notifications", "roles/pubsub.publisher", &gcs_agent));
}

#[test]
fn the_work_bucket_keeps_workspaces_as_long_as_dead_letters() {
    let module = module();
    let mut deployment = deploy(&module, &[]);
    let buckets = deployment.evaluator.instances("google_storage_bucket").unwrap();
    let by_role: BTreeMap<String, _> =
        buckets.iter().map(|b| (b.key.as_ref().unwrap().as_str().unwrap().to_string(), &b.body)).collect();
    assert_eq!(by_role.keys().cloned().collect::<Vec<_>>(), ["outputs", "uploads", "work"]);
    // The programs' work root is gs://WORK/work; a job's workspace is jobs/JOB/ under it
    // (stage::work_prefix), control objects control/ (completion and cancel markers).
    let job_prefix = format!("work/{}", reel_runtime::stage::work_prefix("x").trim_end_matches("x/"));
    let marker = reel_runtime::stage::completed_marker_key("x");
    let control_prefix = format!("work/{}/", marker.split('/').next().unwrap());
    let mut rules = BTreeMap::new();
    for rule in by_role["work"].blocks("lifecycle_rule").unwrap() {
        assert_eq!(rule.block("action").unwrap().unwrap().string("type").unwrap().as_deref(), Some("Delete"));
        let condition = rule.block("condition").unwrap().unwrap();
        let prefixes = condition.attr("matches_prefix").unwrap();
        let age = condition.number("age").unwrap().unwrap();
        for prefix in prefixes.as_array().unwrap() {
            rules.insert(prefix.as_str().unwrap().to_string(), age);
        }
    }
    // A dead-lettered job keeps its workspace for `reel dlq replay`: the workspace must
    // live as long as its dead letter can be replayed, and no longer.
    let topology = reel_runtime::topology::Topology::standard(reel_runtime::topology::DEFAULT_PREFIX);
    let names = topology.names();
    let dead_letter = topology
        .subscription(&names.dead_letter_subscription(reel_events::Stage::Stitch))
        .expect("a dead-letter subscription");
    let dead_letter_days = dead_letter.message_retention.as_secs_f64() / 86_400.0;
    assert_eq!(
        rules.get(&job_prefix),
        Some(&dead_letter_days),
        "workspaces {job_prefix} must go with the dead letters, after {dead_letter_days} days: {rules:?}"
    );
    let control_days =
        rules.get(&control_prefix).copied().unwrap_or_else(|| panic!("no rule for {control_prefix}: {rules:?}"));
    assert!(control_days > 31.0, "completion markers must outlive the 31-day event log, not {control_days} days");
    assert!(by_role["uploads"].blocks("lifecycle_rule").unwrap().is_empty());
    assert!(by_role["outputs"].blocks("lifecycle_rule").unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// The programs' settings: what terraform sets is what the code reads.

fn settings_from(env: &BTreeMap<String, String>) -> Settings {
    let vars: Vec<(String, String)> = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Settings::load_from(None, &vars).unwrap_or_else(|e| panic!("the code rejects terraform's environment: {e}"))
}

fn check_settings(what: &str, env: &BTreeMap<String, String>, prefix: &str) {
    assert!(!env.contains_key("PORT"), "{what}: Cloud Run sets PORT itself");
    let settings = settings_from(env);
    assert_eq!(settings.topic_prefix, prefix, "{what}: REEL_TOPIC_PREFIX must match the topology's names");
    assert_eq!(settings.google_cloud_project.as_deref(), Some(TEST_PROJECT), "{what}");
    assert_eq!(settings.effective_work_root(), format!("gs://{TEST_PROJECT}-reel-work/work"), "{what}");
    assert_eq!(
        settings.effective_allowed_roots(),
        vec![format!("gs://{TEST_PROJECT}-reel-uploads"), format!("gs://{TEST_PROJECT}-reel-outputs")],
        "{what}"
    );
    assert_eq!(
        settings.video_storage_bucket.as_deref(),
        Some(format!("{TEST_PROJECT}-reel-uploads").as_str()),
        "{what}"
    );
    assert_eq!(settings.job_timeout_minutes, 15, "{what}");
    assert_eq!(settings.max_retry_attempts, 3, "{what}");
    assert_eq!(settings.log_level, "info", "{what}");
    for name in
        ["GOOGLE_CLOUD_PROJECT", "VIDEO_STORAGE_BUCKET", "JOB_TIMEOUT_MINUTES", "MAX_RETRY_ATTEMPTS", "LOG_LEVEL"]
    {
        assert!(env.contains_key(name), "{what}: {name} (CONTRACT §7) is not set");
    }
}

fn containers(instance: &Instance, nested_template: bool) -> Vec<&Evaluated> {
    let mut template = instance.body.block("template").unwrap().unwrap();
    if nested_template {
        template = template.block("template").unwrap().unwrap();
    }
    template.blocks("containers").unwrap()
}

#[test]
fn push_services_run_the_stages_with_the_codes_settings() {
    let module = module();
    let mut deployment = deploy(&module, &[]);
    let services = deployment.evaluator.instances("google_cloud_run_v2_service").unwrap();
    let mut stages = BTreeSet::new();
    for service in &services {
        let name = service.body.string("name").unwrap().unwrap();
        let container = containers(service, false)[0];
        check_settings(&name, &container_env(container).unwrap(), DEFAULT_PREFIX);
        let image = container.string("image").unwrap().unwrap();
        if service.resource == "api" {
            assert_eq!(name, "reel-api");
            assert!(image.ends_with("/reel-api:latest"), "{image}");
            let env = container_env(container).unwrap();
            assert_eq!(env["REEL_API_AUDIENCE"], format!("https://reel-api-{PROJECT_NUMBER}.us-central1.run.app"));
            let scaling = service.body.block("template").unwrap().unwrap().block("scaling").unwrap().unwrap();
            assert_eq!(scaling.number("max_instance_count").unwrap(), Some(1.0), "one reel-api folds the whole log");
            assert_eq!(
                scaling.number("min_instance_count").unwrap(),
                Some(0.0),
                "idle costs nothing: no always-on instance"
            );
            continue;
        }
        let service_key = service.key.as_ref().unwrap().as_str().unwrap().to_string();
        assert_eq!(name, format!("reel-{service_key}"));
        let scaling = service.body.block("template").unwrap().unwrap().block("scaling").unwrap().unwrap();
        assert_eq!(scaling.number("min_instance_count").unwrap(), Some(0.0), "{name} scales to zero");
        let env = container_env(container).unwrap();
        let settings = settings_from(&env);
        if service_key == "stitch-large" {
            // The larger tier: the stitch program on its own subscription, more memory.
            assert!(image.ends_with("/reel-stitch:latest"), "{image}");
            assert_eq!(settings.tier, reel_runtime::topology::Tier::Large);
            let limits = container.block("resources").unwrap().unwrap().attr("limits").unwrap();
            assert_eq!(limits, hcl::value!({ cpu = "2", memory = "8Gi" }), "stitch-large sizing");
            continue;
        }
        let stage = service_key;
        assert!(image.ends_with(&format!("/reel-{stage}:latest")), "{image}");
        assert_eq!(settings.tier, reel_runtime::topology::Tier::Standard, "{stage}");
        assert_eq!(settings.large_tier, stage == "stitch", "{stage}: only stitch sends work to a larger tier");
        assert_eq!(container_args(container).unwrap()[0], "--push", "{name} must serve push requests");
        let limits = container.block("resources").unwrap().unwrap().attr("limits").unwrap();
        let template = service.body.block("template").unwrap().unwrap();
        if stage == "stitch" {
            assert_eq!(limits, hcl::value!({ cpu = "2", memory = "4Gi" }), "stitch sizing");
            assert_eq!(template.string("timeout").unwrap().as_deref(), Some("900s"));
            assert_eq!(template.number("max_instance_request_concurrency").unwrap(), Some(1.0));
        }
        stages.insert(stage);
    }
    let all: BTreeSet<String> = Stage::EVERY.iter().map(|s| s.as_str().to_string()).collect();
    assert_eq!(stages, all);
    // No jobs in push mode.
    assert!(deployment.evaluator.instances("google_cloud_run_v2_job").unwrap().is_empty());
}

#[test]
fn pull_jobs_run_the_stages_until_idle() {
    let module = module();
    let mut deployment = deploy(&module, &[("delivery_mode", Value::from("pull"))]);
    let jobs = deployment.evaluator.instances("google_cloud_run_v2_job").unwrap();
    assert_eq!(jobs.len(), Stage::EVERY.len() + 1, "the stages, generate and the larger stitch tier");
    for job in &jobs {
        let container = containers(job, true)[0];
        check_settings(&job.address, &container_env(container).unwrap(), DEFAULT_PREFIX);
        let args = container_args(container).unwrap();
        assert_eq!(args[..2], ["--exit-when-idle".to_string(), "60".to_string()], "{}", job.address);
    }
    let services = deployment.evaluator.instances("google_cloud_run_v2_service").unwrap();
    assert_eq!(
        services.iter().map(|s| s.resource.as_str()).collect::<Vec<_>>(),
        ["api"],
        "only reel-api is a service in pull mode"
    );
}

#[test]
fn every_reference_is_declared() {
    let problems = module().undeclared_references();
    assert!(problems.is_empty(), "terraform/ refers to things it does not declare:\n  {}", problems.join("\n  "));
}

#[test]
fn the_evaluator_refuses_unknown_variables() {
    let module = module();
    assert!(Evaluator::new(&module, &[("project", Value::from("p")), ("no_such_variable", Value::from(1))]).is_err());
}

#[test]
fn terraform_fmt_is_clean() {
    let dir = terraform_dir();
    let status = std::process::Command::new("terraform")
        .args(["fmt", "-check", "-recursive", "-diff"])
        .arg(&dir)
        .env("CHECKPOINT_DISABLE", "1")
        .output();
    match status {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED terraform fmt -check: terraform is not installed on this machine");
        }
        Err(e) => panic!("running terraform: {e}"),
        Ok(out) => assert!(
            out.status.success(),
            "terraform fmt -check -recursive terraform/ failed; run `terraform fmt -recursive terraform/`:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn reel_api_is_invoked_only_by_its_configured_callers_and_knows_them() {
    let module = module();
    let api_members = |deployment: &mut Deployment| -> BTreeSet<String> {
        let grants = deployment.evaluator.instances("google_cloud_run_v2_service_iam_member").unwrap();
        grants
            .iter()
            .filter(|g| g.resource.starts_with("api"))
            .map(|g| {
                assert_eq!(g.body.string("role").unwrap().as_deref(), Some("roles/run.invoker"));
                g.body.string("member").unwrap().unwrap()
            })
            .collect()
    };
    let api_env = |deployment: &mut Deployment| {
        let services = deployment.evaluator.instances("google_cloud_run_v2_service").unwrap();
        let api = services.iter().find(|s| s.resource == "api").expect("reel-api");
        container_env(containers(api, false)[0]).unwrap()
    };

    // By default nobody: no allUsers, no callers.
    let mut deployment = deploy(&module, &[]);
    assert!(api_members(&mut deployment).is_empty());
    assert_eq!(api_env(&mut deployment).get("REEL_API_TRUSTED_CALLERS").map(String::as_str), Some(""));

    let phoenix = "serviceAccount:phoenix@p.iam.gserviceaccount.com";
    let mut deployment = deploy(
        &module,
        &[
            ("api_trusted_callers", Value::from(vec![phoenix])),
            ("api_users", Value::from(vec!["user:ops@example.com", "domain:example.org"])),
        ],
    );
    let want: BTreeSet<String> =
        [phoenix, "user:ops@example.com", "domain:example.org"].into_iter().map(String::from).collect();
    assert_eq!(api_members(&mut deployment), want);
    let env = api_env(&mut deployment);
    assert_eq!(env["REEL_API_TRUSTED_CALLERS"], "phoenix@p.iam.gserviceaccount.com");
    assert_eq!(env["REEL_API_USERS"], "ops@example.com,*@example.org");

    let mut deployment = deploy(&module, &[("api_allow_unauthenticated", Value::from(true))]);
    assert_eq!(api_members(&mut deployment), BTreeSet::from(["allUsers".to_string()]), "only when asked");
}

/// terraform's log-based metrics read only what the code logs: each filters on a line
/// the worker logs (`telemetry::JOB_ENDED`, `telemetry::STAGE_DONE`), every field it
/// extracts is one the worker puts on that line, its labels are the ones it extracts,
/// and the original design's job metrics are all there, under their names.
#[test]
fn log_based_metrics_read_the_fields_the_code_logs() {
    use reel_runtime::telemetry::{JOB_ENDED, JOB_ENDED_FIELDS, STAGE_DONE, STAGE_DONE_FIELDS};
    let module = module();
    let mut deployment = deploy(&module, &[]);
    let metrics = deployment.evaluator.instances("google_logging_metric").unwrap();
    let fields_read = |text: &str| -> BTreeSet<String> {
        text.split("jsonPayload.")
            .skip(1)
            .map(|rest| rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect())
            .collect()
    };
    let mut names = BTreeSet::new();
    for metric in &metrics {
        let name = metric.body.string("name").unwrap().unwrap();
        names.insert(name.trim_start_matches("reel_").to_string());
        let filter = metric.body.string("filter").unwrap().unwrap();
        let logged: Vec<&str> = if filter.contains(&format!("jsonPayload.message=\"{JOB_ENDED}\"")) {
            JOB_ENDED_FIELDS.to_vec()
        } else if filter.contains(&format!("jsonPayload.message=\"{STAGE_DONE}\"")) {
            STAGE_DONE_FIELDS.to_vec()
        } else {
            panic!("{name} filters on no line the code logs: {filter}");
        };
        let mut read = fields_read(&filter);
        read.extend(fields_read(&metric.body.string("value_extractor").unwrap().unwrap_or_default()));
        let extractors = match metric.body.attr("label_extractors").unwrap() {
            Value::Object(map) => map,
            Value::Null => Default::default(),
            other => panic!("{name}: label_extractors {other:?}"),
        };
        for extractor in extractors.values() {
            read.extend(fields_read(extractor.as_str().unwrap()));
        }
        for field in read.iter().filter(|f| *f != "message") {
            assert!(logged.contains(&field.as_str()), "{name} reads jsonPayload.{field}, which the code does not log");
        }
        let labels: BTreeSet<String> = metric
            .body
            .block("metric_descriptor")
            .unwrap()
            .map(|d| d.blocks("labels").unwrap().iter().map(|l| l.string("key").unwrap().unwrap()).collect())
            .unwrap_or_default();
        assert_eq!(labels, extractors.keys().cloned().collect::<BTreeSet<_>>(), "{name}: labels and extractors");
    }
    for original in ["job_duration_seconds", "job_memory_usage_mb", "job_success_rate", "video_processing_rate_mbps"] {
        assert!(names.contains(original), "no log-based metric {original}: {names:?}");
    }
}
