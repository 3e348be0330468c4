//! A terraform root module read the way terraform reads it, as far as reel's checks need:
//! variables with their defaults, locals, `for_each` / `count`, `dynamic` blocks, and
//! references between resources, evaluated with `hcl-rs`.
//!
//! Computed attributes that only the provider knows (a topic's `id`, a service account's
//! `email`, a service's `uri`, a project's `number`) get deterministic stand-ins, so an
//! expression like `google_pubsub_topic.topic["events"].id` evaluates to
//! `projects/PROJECT/topics/reel-events`.

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::expr::{Expression, ObjectKey, Operation, TemplateExpr, TraversalOperator};
use hcl::template::{Directive, Element, Template};
use hcl::{Block, BlockLabel, Body, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The stand-in project number of `data "google_project"`.
pub const PROJECT_NUMBER: &str = "123456789012";

/// Every `*.tf` file of one directory (terraform does not descend into subdirectories).
pub struct Module {
    /// The directory.
    pub dir: PathBuf,
    /// Each file with its parsed body, in file-name order.
    pub files: Vec<(PathBuf, Body)>,
}

/// A `resource "TYPE" "NAME"` block.
#[derive(Clone, Copy)]
pub struct Resource<'m> {
    /// Resource type (`google_pubsub_topic`).
    pub ty: &'m str,
    /// Resource name (`topic`).
    pub name: &'m str,
    /// File it is declared in.
    pub file: &'m Path,
    /// Its body.
    pub body: &'m Body,
}

fn label(block: &Block, index: usize) -> Option<&str> {
    block.labels().get(index).map(|l| match l {
        BlockLabel::Identifier(id) => id.as_str(),
        BlockLabel::String(s) => s.as_str(),
    })
}

fn attribute<'b>(body: &'b Body, key: &str) -> Option<&'b Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

impl Module {
    /// Parse every `*.tf` file in `dir`.
    pub fn load(dir: &Path) -> Result<Module, String> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tf") && p.is_file())
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(format!("no .tf files in {}", dir.display()));
        }
        let mut files = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            let body = hcl::parse(&text).map_err(|e| format!("parsing {}: {e}", path.display()))?;
            files.push((path, body));
        }
        Ok(Module { dir: dir.to_path_buf(), files })
    }

    /// Top-level blocks named `ident`, with their file.
    pub fn blocks<'m>(&'m self, ident: &'m str) -> impl Iterator<Item = (&'m Path, &'m Block)> + 'm {
        self.files.iter().flat_map(move |(path, body)| {
            body.blocks().filter(move |b| b.identifier() == ident).map(move |b| (path.as_path(), b))
        })
    }

    /// Every resource block, in file order.
    pub fn resources(&self) -> Vec<Resource<'_>> {
        self.blocks("resource")
            .filter_map(|(file, block)| {
                Some(Resource { ty: label(block, 0)?, name: label(block, 1)?, file, body: block.body() })
            })
            .collect()
    }

    /// The resource blocks of one type.
    pub fn resources_of(&self, ty: &str) -> Vec<Resource<'_>> {
        self.resources().into_iter().filter(|r| r.ty == ty).collect()
    }

    /// `(type, name)` of every data source.
    pub fn data_sources(&self) -> Vec<(String, String)> {
        self.blocks("data").filter_map(|(_, b)| Some((label(b, 0)?.to_string(), label(b, 1)?.to_string()))).collect()
    }

    /// Every variable with its default expression, if it has one.
    pub fn variables(&self) -> BTreeMap<String, Option<Expression>> {
        self.blocks("variable")
            .filter_map(|(_, b)| Some((label(b, 0)?.to_string(), attribute(b.body(), "default").cloned())))
            .collect()
    }

    /// Every local value's expression.
    pub fn locals(&self) -> BTreeMap<String, Expression> {
        self.blocks("locals")
            .flat_map(|(_, b)| b.body().attributes().map(|a| (a.key().to_string(), a.expr().clone())))
            .collect()
    }

    /// References to undeclared variables, locals, data sources or resources, and calls of
    /// functions terraform does not have: what `terraform validate` would catch first.
    pub fn undeclared_references(&self) -> Vec<String> {
        let mut checker = RefChecker {
            variables: self.variables().into_keys().collect(),
            locals: self.locals().into_keys().collect(),
            data: self.data_sources().into_iter().collect(),
            resources: self.resources().iter().map(|r| (r.ty.to_string(), r.name.to_string())).collect(),
            problems: Vec::new(),
            place: String::new(),
        };
        for (path, body) in &self.files {
            let file = path.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
            for block in body.blocks() {
                let labels: Vec<&str> = (0..block.labels().len()).filter_map(|i| label(block, i)).collect();
                checker.place = format!("{file}: {} {}", block.identifier(), labels.join("."));
                if block.identifier() == "variable" {
                    // `type = string` is a type expression, not a reference.
                    for attr in block.body().attributes().filter(|a| a.key() != "type") {
                        checker.expr(attr.expr(), &mut Vec::new());
                    }
                    for nested in block.body().blocks() {
                        checker.body(nested.body(), &mut Vec::new());
                    }
                } else {
                    checker.body(block.body(), &mut Vec::new());
                }
            }
        }
        checker.problems
    }
}

/// Functions of terraform that the configuration may call.
const TERRAFORM_FUNCTIONS: &[&str] = &[
    "can",
    "coalesce",
    "concat",
    "contains",
    "distinct",
    "flatten",
    "format",
    "join",
    "jsonencode",
    "keys",
    "length",
    "lookup",
    "lower",
    "max",
    "merge",
    "min",
    "regex",
    "replace",
    "sort",
    "split",
    "startswith",
    "substr",
    "toset",
    "tolist",
    "tomap",
    "tonumber",
    "tostring",
    "try",
    "upper",
    "values",
];

struct RefChecker {
    variables: BTreeSet<String>,
    locals: BTreeSet<String>,
    data: BTreeSet<(String, String)>,
    resources: BTreeSet<(String, String)>,
    problems: Vec<String>,
    place: String,
}

impl RefChecker {
    fn body(&mut self, body: &Body, scope: &mut Vec<String>) {
        for attr in body.attributes() {
            self.expr(attr.expr(), scope);
        }
        for block in body.blocks() {
            if block.identifier() == "dynamic" {
                let iterator = label(block, 0).unwrap_or_default().to_string();
                scope.push(iterator);
                self.body(block.body(), scope);
                scope.pop();
            } else {
                self.body(block.body(), scope);
            }
        }
    }

    fn expr(&mut self, expr: &Expression, scope: &mut Vec<String>) {
        match expr {
            Expression::Array(items) => items.iter().for_each(|e| self.expr(e, scope)),
            Expression::Object(object) => {
                for (key, value) in object {
                    if let ObjectKey::Expression(k) = key {
                        self.expr(k, scope);
                    }
                    self.expr(value, scope);
                }
            }
            Expression::TemplateExpr(template) => self.template_expr(template, scope),
            Expression::Variable(var) => self.root(var.as_str(), &[], scope),
            Expression::Traversal(traversal) => {
                match &traversal.expr {
                    Expression::Variable(var) => self.root(var.as_str(), &traversal.operators, scope),
                    other => self.expr(other, scope),
                }
                for op in &traversal.operators {
                    if let TraversalOperator::Index(index) = op {
                        self.expr(index, scope);
                    }
                }
            }
            Expression::FuncCall(call) => {
                let name = call.name.name.as_str();
                if !call.name.namespace.is_empty() || !TERRAFORM_FUNCTIONS.contains(&name) {
                    self.problems.push(format!("{}: unknown function {name}()", self.place));
                }
                call.args.iter().for_each(|e| self.expr(e, scope));
            }
            Expression::Parenthesis(inner) => self.expr(inner, scope),
            Expression::Conditional(c) => {
                self.expr(&c.cond_expr, scope);
                self.expr(&c.true_expr, scope);
                self.expr(&c.false_expr, scope);
            }
            Expression::Operation(op) => match op.as_ref() {
                Operation::Unary(u) => self.expr(&u.expr, scope),
                Operation::Binary(b) => {
                    self.expr(&b.lhs_expr, scope);
                    self.expr(&b.rhs_expr, scope);
                }
            },
            Expression::ForExpr(f) => {
                self.expr(&f.collection_expr, scope);
                let pushed = 1 + usize::from(f.key_var.is_some());
                scope.push(f.value_var.to_string());
                if let Some(k) = &f.key_var {
                    scope.push(k.to_string());
                }
                if let Some(k) = &f.key_expr {
                    self.expr(k, scope);
                }
                self.expr(&f.value_expr, scope);
                if let Some(c) = &f.cond_expr {
                    self.expr(c, scope);
                }
                scope.truncate(scope.len() - pushed);
            }
            _ => {}
        }
    }

    fn template_expr(&mut self, template: &TemplateExpr, scope: &mut Vec<String>) {
        match Template::from_expr(template) {
            Ok(t) => self.template(&t, scope),
            Err(e) => self.problems.push(format!("{}: bad template {template}: {e}", self.place)),
        }
    }

    fn template(&mut self, template: &Template, scope: &mut Vec<String>) {
        for element in template.elements() {
            match element {
                Element::Literal(_) => {}
                Element::Interpolation(i) => self.expr(&i.expr, scope),
                Element::Directive(d) => match d.as_ref() {
                    Directive::If(i) => {
                        self.expr(&i.cond_expr, scope);
                        self.template(&i.true_template, scope);
                        if let Some(f) = &i.false_template {
                            self.template(f, scope);
                        }
                    }
                    Directive::For(f) => {
                        self.expr(&f.collection_expr, scope);
                        scope.push(f.value_var.to_string());
                        if let Some(k) = &f.key_var {
                            scope.push(k.to_string());
                        }
                        self.template(&f.template, scope);
                        scope.truncate(scope.len() - 1 - usize::from(f.key_var.is_some()));
                    }
                },
            }
        }
    }

    fn root(&mut self, root: &str, ops: &[TraversalOperator], scope: &[String]) {
        let attr = |i: usize| match ops.get(i) {
            Some(TraversalOperator::GetAttr(id)) => Some(id.to_string()),
            _ => None,
        };
        if scope.iter().any(|s| s == root) || matches!(root, "each" | "count" | "self" | "path" | "terraform") {
            return;
        }
        let problem = match root {
            "var" => attr(0).filter(|v| !self.variables.contains(v)).map(|v| format!("undeclared variable var.{v}")),
            "local" => attr(0).filter(|l| !self.locals.contains(l)).map(|l| format!("undeclared local.{l}")),
            "data" => match (attr(0), attr(1)) {
                (Some(t), Some(n)) if !self.data.contains(&(t.clone(), n.clone())) => {
                    Some(format!("undeclared data.{t}.{n}"))
                }
                _ => None,
            },
            ty => match attr(0) {
                Some(name) if !self.resources.contains(&(ty.to_string(), name.clone())) => {
                    Some(format!("undeclared resource {ty}.{name}"))
                }
                None => Some(format!("unknown name {ty}")),
                _ => None,
            },
        };
        if let Some(p) = problem {
            self.problems.push(format!("{}: {p}", self.place));
        }
    }
}

/// One resource instance (or nested block), evaluated: each attribute's value or why it
/// could not be evaluated, and its nested blocks in order.
#[derive(Debug, Clone, Default)]
pub struct Evaluated {
    /// Attributes.
    pub attrs: BTreeMap<String, Result<Value, String>>,
    /// Nested blocks (dynamic blocks expanded), by block type.
    pub blocks: Vec<(String, Evaluated)>,
    /// Dynamic blocks whose `for_each` failed, by block type.
    pub dynamic_errors: BTreeMap<String, String>,
}

impl Evaluated {
    /// An attribute's value; absent is null, as in terraform.
    pub fn attr(&self, name: &str) -> Result<Value, String> {
        match self.attrs.get(name) {
            None => Ok(Value::Null),
            Some(Ok(v)) => Ok(v.clone()),
            Some(Err(e)) => Err(format!("{name}: {e}")),
        }
    }

    /// An attribute that must be a string.
    pub fn string(&self, name: &str) -> Result<Option<String>, String> {
        match self.attr(name)? {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(s)),
            other => Err(format!("{name}: expected a string, got {other}")),
        }
    }

    /// An attribute that must be a number.
    pub fn number(&self, name: &str) -> Result<Option<f64>, String> {
        match self.attr(name)? {
            Value::Null => Ok(None),
            Value::Number(n) => n.as_f64().map(Some).ok_or_else(|| format!("{name}: not a number")),
            other => Err(format!("{name}: expected a number, got {other}")),
        }
    }

    /// The nested blocks of one type.
    pub fn blocks(&self, ty: &str) -> Result<Vec<&Evaluated>, String> {
        if let Some(e) = self.dynamic_errors.get(ty) {
            return Err(format!("dynamic \"{ty}\": {e}"));
        }
        Ok(self.blocks.iter().filter(|(t, _)| t == ty).map(|(_, b)| b).collect())
    }

    /// The single nested block of one type, if present.
    pub fn block(&self, ty: &str) -> Result<Option<&Evaluated>, String> {
        let blocks = self.blocks(ty)?;
        match blocks.len() {
            0 => Ok(None),
            1 => Ok(Some(blocks[0])),
            n => Err(format!("{n} {ty} blocks, expected at most one")),
        }
    }
}

/// One instance of a resource.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Terraform address: `google_pubsub_topic.topic["reel-events"]`.
    pub address: String,
    /// The resource name (`topic`).
    pub resource: String,
    /// `each.key` or `count.index`, if the resource is repeated.
    pub key: Option<Value>,
    /// The evaluated body.
    pub body: Evaluated,
}

/// Evaluates a module with given variable values, resource type by resource type.
pub struct Evaluator<'m> {
    module: &'m Module,
    vars: Map<String, Value>,
    locals: Map<String, Value>,
    local_errors: BTreeMap<String, String>,
    data: Map<String, Value>,
    state: Map<String, Value>,
}

fn object(pairs: impl IntoIterator<Item = (String, Value)>) -> Value {
    Value::Object(pairs.into_iter().collect())
}

impl<'m> Evaluator<'m> {
    /// Variables take `values`, else their defaults; one without either is an error.
    pub fn new(module: &'m Module, values: &[(&str, Value)]) -> Result<Evaluator<'m>, String> {
        let mut vars = Map::new();
        let empty = Context::new();
        for (name, default) in module.variables() {
            let value = match values.iter().find(|(n, _)| *n == name) {
                Some((_, v)) => v.clone(),
                None => match default {
                    Some(expr) => expr.evaluate(&empty).map_err(|e| format!("default of var.{name}: {e}"))?,
                    None => return Err(format!("var.{name} has no default: give it a value")),
                },
            };
            vars.insert(name, value);
        }
        if let Some((unknown, _)) = values.iter().find(|(n, _)| !vars.contains_key(*n)) {
            return Err(format!("no variable named {unknown}"));
        }
        let project = vars.get("project").and_then(|v| v.as_str()).unwrap_or("PROJECT").to_string();
        let mut data = Map::new();
        for (ty, name) in module.data_sources() {
            let attrs = match ty.as_str() {
                "google_project" => object([
                    ("number".to_string(), Value::from(PROJECT_NUMBER)),
                    ("project_id".to_string(), Value::from(project.as_str())),
                ]),
                "google_storage_project_service_account" => object([(
                    "email_address".to_string(),
                    Value::from(format!("service-{PROJECT_NUMBER}@gs-project-accounts.iam.gserviceaccount.com")),
                )]),
                _ => object([]),
            };
            let entry = data.entry(ty).or_insert_with(|| object([]));
            if let Value::Object(map) = entry {
                map.insert(name, attrs);
            }
        }
        let mut evaluator =
            Evaluator { module, vars, locals: Map::new(), local_errors: BTreeMap::new(), data, state: Map::new() };
        evaluator.evaluate_locals();
        Ok(evaluator)
    }

    /// The value of a variable.
    pub fn var(&self, name: &str) -> Option<&Value> {
        self.vars.get(name)
    }

    /// The value of a local, or why it cannot be evaluated (yet).
    pub fn local(&self, name: &str) -> Result<&Value, String> {
        self.locals
            .get(name)
            .ok_or_else(|| self.local_errors.get(name).cloned().unwrap_or_else(|| format!("no local.{name}")))
    }

    fn context(&self) -> Context<'static> {
        let mut ctx = Context::new();
        ctx.declare_var("var", Value::Object(self.vars.clone()));
        ctx.declare_var("local", Value::Object(self.locals.clone()));
        ctx.declare_var("data", Value::Object(self.data.clone()));
        for (ty, value) in &self.state {
            ctx.declare_var(ty.as_str(), value.clone());
        }
        declare_functions(&mut ctx);
        ctx
    }

    /// Evaluate every local that can be, as often as new ones become available.
    fn evaluate_locals(&mut self) {
        let exprs = self.module.locals();
        loop {
            let ctx = self.context();
            let mut progress = false;
            for (name, expr) in &exprs {
                if self.locals.contains_key(name) {
                    continue;
                }
                match expr.evaluate(&ctx) {
                    Ok(value) => {
                        self.locals.insert(name.clone(), value);
                        self.local_errors.remove(name);
                        progress = true;
                    }
                    Err(e) => {
                        self.local_errors.insert(name.clone(), format!("local.{name}: {e}"));
                    }
                }
            }
            if !progress {
                break;
            }
        }
    }

    /// Evaluate every instance of every resource of type `ty`, and make them available to
    /// later expressions (`ty.NAME[...]`).
    pub fn instances(&mut self, ty: &str) -> Result<Vec<Instance>, String> {
        let ctx = self.context();
        let mut all = Vec::new();
        let mut declared = Map::new();
        for resource in self.module.resources_of(ty) {
            let base = format!("{}.{}", resource.ty, resource.name);
            let repeat = |key: &str| -> Result<Option<Value>, String> {
                attribute(resource.body, key)
                    .map(|e| e.evaluate(&ctx).map_err(|err| format!("{base}.{key}: {err}")))
                    .transpose()
            };
            let mut instances = Vec::new();
            match (repeat("for_each")?, repeat("count")?) {
                (Some(_), Some(_)) => return Err(format!("{base}: both for_each and count")),
                (Some(collection), None) => {
                    for (key, value) in for_each_items(&collection).map_err(|e| format!("{base}.for_each: {e}"))? {
                        let mut child = ctx.clone();
                        child.declare_var(
                            "each",
                            object([("key".to_string(), Value::from(key.as_str())), ("value".to_string(), value)]),
                        );
                        instances.push(Instance {
                            address: format!("{base}[{key:?}]"),
                            resource: resource.name.to_string(),
                            key: Some(Value::from(key)),
                            body: evaluate_body(resource.body, &child),
                        });
                    }
                }
                (None, Some(count)) => {
                    let n = count.as_u64().ok_or_else(|| format!("{base}.count: not a whole number: {count}"))?;
                    for index in 0..n {
                        instances.push(Instance {
                            address: format!("{base}[{index}]"),
                            resource: resource.name.to_string(),
                            key: Some(Value::from(index)),
                            body: evaluate_body(resource.body, &ctx_with_count(&ctx, index)),
                        });
                    }
                }
                (None, None) => instances.push(Instance {
                    address: base.clone(),
                    resource: resource.name.to_string(),
                    key: None,
                    body: evaluate_body(resource.body, &ctx),
                }),
            }
            let project = self.vars.get("project").and_then(|v| v.as_str()).unwrap_or("PROJECT").to_string();
            let state_of = |i: &Instance| computed(ty, &i.body, &project);
            let value =
                if attribute(resource.body, "for_each").is_some() {
                    object(instances.iter().map(|i| {
                        (i.key.as_ref().and_then(|k| k.as_str()).unwrap_or_default().to_string(), state_of(i))
                    }))
                } else if attribute(resource.body, "count").is_some() {
                    Value::Array(instances.iter().map(state_of).collect())
                } else {
                    state_of(&instances[0])
                };
            declared.insert(resource.name.to_string(), value);
            all.extend(instances);
        }
        self.state.insert(ty.to_string(), Value::Object(declared));
        self.evaluate_locals();
        Ok(all)
    }
}

fn ctx_with_count<'a>(ctx: &Context<'a>, index: u64) -> Context<'a> {
    let mut child = ctx.clone();
    child.declare_var("count", object([("index".to_string(), Value::from(index))]));
    child
}

/// `(each.key, each.value)` of a `for_each` value: an object's entries, or a set's strings.
fn for_each_items(collection: &Value) -> Result<Vec<(String, Value)>, String> {
    match collection {
        Value::Object(map) => Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok((s.clone(), item.clone())),
                other => Err(format!("a set of strings is needed, found {other}")),
            })
            .collect(),
        other => Err(format!("a map or a set of strings is needed, found {other}")),
    }
}

/// Attributes a resource exposes, including stand-ins for what the provider computes.
fn computed(ty: &str, body: &Evaluated, project: &str) -> Value {
    let mut map: Map<String, Value> =
        body.attrs.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or(Value::Null))).collect();
    let name = body.string("name").ok().flatten().unwrap_or_default();
    let mut set = |k: &str, v: String| {
        map.insert(k.to_string(), Value::from(v));
    };
    match ty {
        "google_pubsub_topic" => set("id", format!("projects/{project}/topics/{name}")),
        "google_pubsub_subscription" => set("id", format!("projects/{project}/subscriptions/{name}")),
        "google_service_account" => {
            let account = body.string("account_id").ok().flatten().unwrap_or_default();
            let email = format!("{account}@{project}.iam.gserviceaccount.com");
            set("name", format!("projects/{project}/serviceAccounts/{email}"));
            set("member", format!("serviceAccount:{email}"));
            set("email", email);
        }
        "google_storage_bucket" => set("url", format!("gs://{name}")),
        "google_cloud_run_v2_service" => set("uri", format!("https://{name}-stand-in.a.run.app")),
        _ => set("id", format!("{ty}/{name}")),
    }
    Value::Object(map)
}

fn evaluate_body(body: &Body, ctx: &Context) -> Evaluated {
    let mut out = Evaluated::default();
    for attr in body.attributes() {
        if matches!(attr.key(), "for_each" | "count" | "depends_on" | "provider") {
            continue;
        }
        out.attrs.insert(attr.key().to_string(), attr.expr().evaluate(ctx).map_err(|e| e.to_string()));
    }
    for block in body.blocks() {
        match block.identifier() {
            "lifecycle" => {}
            "dynamic" => {
                let ty = label(block, 0).unwrap_or_default().to_string();
                let iterator = match attribute(block.body(), "iterator") {
                    Some(Expression::Variable(v)) => v.to_string(),
                    _ => ty.clone(),
                };
                let items = attribute(block.body(), "for_each")
                    .ok_or_else(|| "no for_each".to_string())
                    .and_then(|e| e.evaluate(ctx).map_err(|e| e.to_string()))
                    .and_then(|v| match v {
                        Value::Array(items) => {
                            Ok(items.into_iter().enumerate().map(|(i, v)| (Value::from(i), v)).collect::<Vec<_>>())
                        }
                        Value::Object(map) => Ok(map.into_iter().map(|(k, v)| (Value::from(k), v)).collect()),
                        other => Err(format!("cannot iterate over {other}")),
                    });
                let content = block.body().blocks().find(|b| b.identifier() == "content");
                match (items, content) {
                    (Ok(items), Some(content)) => {
                        for (key, value) in items {
                            let mut child = ctx.clone();
                            child.declare_var(
                                iterator.as_str(),
                                object([("key".to_string(), key), ("value".to_string(), value)]),
                            );
                            out.blocks.push((ty.clone(), evaluate_body(content.body(), &child)));
                        }
                    }
                    (Err(e), _) => {
                        out.dynamic_errors.insert(ty, e);
                    }
                    (Ok(_), None) => {
                        out.dynamic_errors.insert(ty, "no content block".into());
                    }
                }
            }
            ident => out.blocks.push((ident.to_string(), evaluate_body(block.body(), ctx))),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// The few terraform functions the configuration uses, for the evaluator.

fn declare_functions(ctx: &mut Context) {
    let any = || FuncDef::builder().variadic_param(ParamType::Any);
    ctx.declare_func("tostring", FuncDef::builder().param(ParamType::Any).build(tostring));
    ctx.declare_func("join", FuncDef::builder().param(ParamType::String).param(ParamType::Any).build(join));
    ctx.declare_func("concat", any().build(concat));
    ctx.declare_func("merge", any().build(merge));
    ctx.declare_func("flatten", FuncDef::builder().param(ParamType::Any).build(flatten));
    ctx.declare_func("keys", FuncDef::builder().param(ParamType::Any).build(keys));
    ctx.declare_func("toset", FuncDef::builder().param(ParamType::Any).build(toset));
    ctx.declare_func("contains", FuncDef::builder().param(ParamType::Any).param(ParamType::Any).build(contains));
    ctx.declare_func(
        "lookup",
        FuncDef::builder().param(ParamType::Any).param(ParamType::String).param(ParamType::Any).build(lookup),
    );
    ctx.declare_func(
        "replace",
        FuncDef::builder().param(ParamType::String).param(ParamType::String).param(ParamType::String).build(replace),
    );
}

fn text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("cannot convert {other} to a string")),
    }
}

fn tostring(args: FuncArgs) -> Result<Value, String> {
    text(&args[0]).map(Value::from)
}

fn join(args: FuncArgs) -> Result<Value, String> {
    let items = args[1].as_array().ok_or("join: expected a list")?;
    let parts: Result<Vec<String>, String> = items.iter().map(text).collect();
    Ok(Value::from(parts?.join(args[0].as_str().unwrap_or_default())))
}

fn concat(args: FuncArgs) -> Result<Value, String> {
    let mut out = Vec::new();
    for list in args.iter() {
        out.extend(list.as_array().ok_or("concat: expected lists")?.iter().cloned());
    }
    Ok(Value::Array(out))
}

fn merge(args: FuncArgs) -> Result<Value, String> {
    let mut out = Map::new();
    for map in args.iter() {
        out.extend(map.as_object().ok_or("merge: expected maps")?.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok(Value::Object(out))
}

fn flatten(args: FuncArgs) -> Result<Value, String> {
    fn walk(value: &Value, out: &mut Vec<Value>) {
        match value {
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            other => out.push(other.clone()),
        }
    }
    let mut out = Vec::new();
    walk(&args[0], &mut out);
    Ok(Value::Array(out))
}

fn keys(args: FuncArgs) -> Result<Value, String> {
    let map = args[0].as_object().ok_or("keys: expected a map")?;
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    Ok(Value::Array(keys.into_iter().map(|k| Value::from(k.as_str())).collect()))
}

fn toset(args: FuncArgs) -> Result<Value, String> {
    let items = args[0].as_array().ok_or("toset: expected a list")?;
    let mut out: Vec<Value> = Vec::new();
    for item in items {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    Ok(Value::Array(out))
}

fn contains(args: FuncArgs) -> Result<Value, String> {
    let items = args[0].as_array().ok_or("contains: expected a list")?;
    Ok(Value::Bool(items.contains(&args[1])))
}

fn lookup(args: FuncArgs) -> Result<Value, String> {
    let map = args[0].as_object().ok_or("lookup: expected a map")?;
    Ok(map.get(args[1].as_str().unwrap_or_default()).cloned().unwrap_or_else(|| args[2].clone()))
}

fn replace(args: FuncArgs) -> Result<Value, String> {
    let (s, from, to) = (
        args[0].as_str().unwrap_or_default(),
        args[1].as_str().unwrap_or_default(),
        args[2].as_str().unwrap_or_default(),
    );
    Ok(Value::from(s.replace(from, to)))
}
