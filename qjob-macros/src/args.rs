//! Parsing `#[job(...)]`'s arguments into [`Args`], checking each value.

use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, LitStr, Meta, Token};

use crate::values;

const KEYS: &[&str] = &[
    "queue",
    "name",
    "prefetch",
    "retry",
    "concurrency",
    "backoff",
    "jitter",
    "timeout",
    "partition_by",
    "partitions",
    "shards",
    "single_active",
    "circuit_breaker",
    "rate_limit",
    "queue_type",
    "max_length",
    "delivery_limit",
    "priorities",
    "autoscale",
    "unique",
    "inbox",
    "cron",
    "global_concurrency",
    "resource",
    "global_rate",
    "key_rate",
    "rate_by",
    "class",
    "weight",
    "schema",
];

const BREAKER_KEYS: &[&str] = &["failure_rate", "min_attempts", "window", "open_for"];

const AUTOSCALE_KEYS: &[&str] = &["min", "max", "target_latency"];

const UNIQUE_KEYS: &[&str] = &["key", "within", "until"];

/// `unique(...)`: the key's field path (none: the whole payload), the
/// window in milliseconds, and when a worker frees the lock.
pub(crate) struct Unique {
    pub(crate) key: Option<(Vec<Ident>, Span)>,
    pub(crate) within: u64,
    pub(crate) until: &'static str,
}

/// The longest queue name accepted: AMQP allows 255 bytes, and qjob appends
/// suffixes such as `.dlq` and `.p123`.
const MAX_QUEUE_LEN: usize = 200;

pub(crate) enum Backoff {
    Immediate,
    Fixed(u64),
    Incremental {
        base: u64,
        step: u64,
    },
    Exponential {
        base: u64,
        max: u64,
        jitter: Option<bool>,
    },
}

pub(crate) struct Autoscale {
    pub(crate) min: u64,
    pub(crate) max: u64,
    pub(crate) target_latency: u64,
}

pub(crate) struct Breaker {
    pub(crate) failure_rate: f64,
    pub(crate) min_attempts: u64,
    pub(crate) window: u64,
    pub(crate) open_for: u64,
}

#[derive(Default)]
pub(crate) struct Args {
    pub(crate) queue: Option<LitStr>,
    pub(crate) name: Option<Ident>,
    pub(crate) prefetch: Option<u64>,
    pub(crate) retry: Option<u64>,
    pub(crate) concurrency: Option<u64>,
    pub(crate) backoff: Option<(Backoff, Span)>,
    pub(crate) jitter: Option<(bool, Span)>,
    pub(crate) timeout: Option<u64>,
    pub(crate) partition_by: Option<(Vec<Ident>, Span)>,
    pub(crate) partitions: Option<(u64, Span)>,
    pub(crate) shards: Option<(u64, Span)>,
    pub(crate) single_active: Option<bool>,
    pub(crate) circuit_breaker: Option<Breaker>,
    pub(crate) rate_limit: Option<(u64, u64)>,
    pub(crate) quorum: Option<bool>,
    pub(crate) max_length: Option<u64>,
    pub(crate) delivery_limit: Option<(u64, Span)>,
    pub(crate) priorities: Option<u64>,
    pub(crate) autoscale: Option<Autoscale>,
    pub(crate) unique: Option<Unique>,
    pub(crate) inbox: Option<u64>,
    /// `cron = "..."`: the schedule the job fires on, with its payload's
    /// default.
    pub(crate) cron: Option<LitStr>,
    pub(crate) global_concurrency: Option<u64>,
    pub(crate) resource: Option<LitStr>,
    pub(crate) global_rate: Option<(u64, u64)>,
    pub(crate) key_rate: Option<((u64, u64), Span)>,
    pub(crate) rate_by: Option<(Vec<Ident>, Span)>,
    pub(crate) class: Option<&'static str>,
    pub(crate) weight: Option<u64>,
    /// `schema`: the payload's JSON Schema, derived through schemars (at
    /// this span, an error if the payload or qjob's features cannot).
    pub(crate) schema: Option<Span>,
    /// The arguments given, valid or not.
    pub(crate) given: Vec<String>,
}

/// Errors collected over the whole attribute and reported together, so
/// that a user fixes them in one pass (serde's `Ctxt` pattern).
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(errors) => errors.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// The value, or `None` with its error kept.
    pub(crate) fn check<T>(&mut self, result: syn::Result<T>) -> Option<T> {
        result.map_err(|error| self.push(error)).ok()
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}

impl Args {
    /// Every argument that parses; the others' errors go to `errors`.
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> Self {
        let mut args = Args::default();
        let Some(metas) =
            errors.check(Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens))
        else {
            return args;
        };
        let mut seen = std::mem::take(&mut args.given);
        for meta in &metas {
            let Some(key) = errors.check(key_of(meta, KEYS)) else {
                continue;
            };
            if seen.contains(&key) {
                errors.push(syn::Error::new(
                    meta.path().span(),
                    format!("duplicate argument `{key}`"),
                ));
                continue;
            }
            errors.check(args.set(&key, meta));
            seen.push(key);
        }
        args.given = seen;
        args.check_combinations(errors);
        args
    }

    fn set(&mut self, key: &str, meta: &Meta) -> syn::Result<()> {
        if key == "circuit_breaker" {
            self.circuit_breaker = Some(breaker(meta)?);
            return Ok(());
        }
        if key == "unique" {
            self.unique = Some(unique(meta)?);
            return Ok(());
        }
        if key == "autoscale" {
            self.autoscale = Some(autoscale(meta)?);
            return Ok(());
        }
        if key == "schema" {
            let Meta::Path(path) = meta else {
                return Err(syn::Error::new(
                    meta.span(),
                    "`schema` takes no value: #[job(queue = \"...\", schema)]",
                ));
            };
            self.schema = Some(path.span());
            return Ok(());
        }
        let value = value_of(key, meta)?;
        match key {
            "queue" => self.queue = Some(queue(value)?),
            "name" => self.name = Some(name(value)?),
            "prefetch" => self.prefetch = Some(values::integer(key, value, 1, 65_535)?),
            "retry" => self.retry = Some(values::integer(key, value, 0, u64::from(u32::MAX))?),
            "concurrency" => {
                self.concurrency = Some(values::integer(key, value, 1, u64::from(u32::MAX))?)
            }
            "backoff" => self.backoff = Some((backoff(value)?, value.span())),
            "jitter" => self.jitter = Some((values::boolean(key, value)?, value.span())),
            "timeout" => {
                let ms = values::duration(key, value)?;
                if ms == 0 {
                    return Err(syn::Error::new(
                        value.span(),
                        "`timeout` must be longer than 0",
                    ));
                }
                self.timeout = Some(ms);
            }
            "partition_by" => self.partition_by = Some((field_path(key, value)?, value.span())),
            "partitions" => {
                self.partitions = Some((values::integer(key, value, 1, 1024)?, value.span()))
            }
            "shards" => self.shards = Some((values::integer(key, value, 1, 1024)?, value.span())),
            "single_active" => self.single_active = Some(values::boolean(key, value)?),
            "rate_limit" => self.rate_limit = Some(values::rate(key, value)?),
            "queue_type" => self.quorum = Some(queue_type(value)?),
            "max_length" => {
                self.max_length = Some(values::integer(key, value, 1, u64::from(u32::MAX))?)
            }
            "priorities" => self.priorities = Some(values::integer(key, value, 1, 255)?),
            "inbox" => self.inbox = Some(positive_duration(key, value)?),
            #[cfg(feature = "cron")]
            "cron" => self.cron = Some(crate::cron::checked(key, value)?),
            #[cfg(not(feature = "cron"))]
            "cron" => {
                return Err(syn::Error::new_spanned(
                    value,
                    "`cron` needs qjob's feature `periodic` (on by default)",
                ));
            }
            "global_concurrency" => {
                self.global_concurrency = Some(values::integer(key, value, 1, u64::from(u32::MAX))?)
            }
            "resource" => self.resource = Some(resource(value)?),
            "global_rate" => self.global_rate = Some(values::rate(key, value)?),
            "key_rate" => self.key_rate = Some((values::rate(key, value)?, value.span())),
            "rate_by" => self.rate_by = Some((field_path(key, value)?, value.span())),
            "class" => self.class = Some(class(value)?),
            "weight" => self.weight = Some(values::integer(key, value, 1, u64::from(u32::MAX))?),
            "delivery_limit" => {
                self.delivery_limit = Some((
                    values::integer(key, value, 1, u64::from(u32::MAX))?,
                    value.span(),
                ))
            }
            _ => unreachable!("key_of accepts only known keys"),
        }
        Ok(())
    }

    fn check_combinations(&self, errors: &mut Errors) {
        if let Some((_, span)) = self.jitter
            && !matches!(self.backoff, Some((Backoff::Exponential { .. }, _)))
        {
            errors.push(syn::Error::new(
                span,
                "`jitter` applies to exponential backoff only: add `backoff = exponential(base = \"...\", max = \"...\")`",
            ));
        }
        if let Some((_, span)) = self.delivery_limit
            && self.quorum != Some(true)
        {
            errors.push(syn::Error::new(
                span,
                "`delivery_limit` needs `queue_type = \"quorum\"`: RabbitMQ counts deliveries on quorum queues only",
            ));
        }
        match (&self.rate_by, &self.key_rate) {
            (Some((_, span)), None) => errors.push(syn::Error::new(
                *span,
                "`rate_by` needs `key_rate = \"N/period\"` (the rate each key keeps)",
            )),
            (None, Some((_, span))) => errors.push(syn::Error::new(
                *span,
                "`key_rate` needs `rate_by = field` (the key each rate is kept for)",
            )),
            _ => {}
        }
        match (&self.partition_by, &self.partitions) {
            (Some((_, span)), None) => errors.push(syn::Error::new(
                *span,
                "`partition_by` needs `partitions = N` (the number of partition queues)",
            )),
            (None, Some((_, span))) => errors.push(syn::Error::new(
                *span,
                "`partitions` needs `partition_by = field` (the key to partition on)",
            )),
            _ => {}
        }
        if let Some((shards, span)) = self.shards
            && shards > 1
        {
            if self.partitions.is_some() || self.partition_by.is_some() {
                errors.push(syn::Error::new(
                    span,
                    "`shards` spreads jobs in no order and `partitions` keeps a key's order: choose one",
                ));
            }
            if self.single_active == Some(true) {
                errors.push(syn::Error::new(
                    span,
                    "`shards` spreads jobs over queues that every worker consumes, and `single_active` keeps one consumer: choose one",
                ));
            }
        }
    }
}

/// The key of an argument, checked against `valid`.
fn key_of(meta: &Meta, valid: &[&str]) -> syn::Result<String> {
    let path = meta.path();
    let Some(ident) = path.get_ident() else {
        return Err(syn::Error::new(
            path.span(),
            format!("expected an argument name, one of: {}", valid.join(", ")),
        ));
    };
    let key = ident.to_string();
    if !valid.contains(&key.as_str()) {
        return Err(syn::Error::new(
            ident.span(),
            format!(
                "unknown argument `{key}`; valid arguments are: {}",
                valid.join(", ")
            ),
        ));
    }
    Ok(key)
}

fn value_of<'a>(key: &str, meta: &'a Meta) -> syn::Result<&'a Expr> {
    match meta {
        Meta::NameValue(pair) => Ok(&pair.value),
        _ => Err(syn::Error::new(
            meta.span(),
            format!("`{key}` expects a value: `{key} = ...`"),
        )),
    }
}

fn queue(value: &Expr) -> syn::Result<LitStr> {
    let lit = values::string("queue", value)?;
    let name = lit.value();
    if name.is_empty() || name.len() > MAX_QUEUE_LEN {
        return Err(syn::Error::new(
            lit.span(),
            format!("`queue` must be a name of 1 to {MAX_QUEUE_LEN} bytes"),
        ));
    }
    if name.starts_with("amq.") {
        return Err(syn::Error::new(
            lit.span(),
            "`queue` names starting with \"amq.\" are reserved by RabbitMQ",
        ));
    }
    Ok(lit)
}

/// A shared resource's name: what `WorkerBuilder::resource` sizes.
fn resource(value: &Expr) -> syn::Result<LitStr> {
    let lit = values::string("resource", value)?;
    let name = lit.value();
    if name.is_empty() || name.len() > MAX_QUEUE_LEN || name.contains(char::is_whitespace) {
        return Err(syn::Error::new(
            lit.span(),
            format!(
                "`resource` must be a name of 1 to {MAX_QUEUE_LEN} bytes without spaces, like resource = \"billing-db\""
            ),
        ));
    }
    Ok(lit)
}

fn class(value: &Expr) -> syn::Result<&'static str> {
    let lit = values::string("class", value)?;
    match lit.value().as_str() {
        "critical" => Ok("critical"),
        "default" => Ok("default"),
        "bulk" => Ok("bulk"),
        _ => Err(syn::Error::new(
            lit.span(),
            "`class` must be \"critical\", \"default\" or \"bulk\"",
        )),
    }
}

fn name(value: &Expr) -> syn::Result<Ident> {
    let lit = values::string("name", value)?;
    syn::parse_str::<Ident>(&lit.value()).map_err(|_| {
        syn::Error::new(
            lit.span(),
            "`name` must be a valid type name, like name = \"ChargeJob\"",
        )
    })
}

fn queue_type(value: &Expr) -> syn::Result<bool> {
    let lit = values::string("queue_type", value)?;
    match lit.value().as_str() {
        "classic" => Ok(false),
        "quorum" => Ok(true),
        other => Err(syn::Error::new(
            lit.span(),
            format!("`queue_type` must be \"classic\" or \"quorum\", found {other:?}"),
        )),
    }
}

/// `field` or `field.nested`.
fn field_path(key: &str, value: &Expr) -> syn::Result<Vec<Ident>> {
    let invalid = || {
        syn::Error::new(
            value.span(),
            format!(
                "`{key}` expects a field of the payload, like `{key} = account` or `{key} = customer.id`"
            ),
        )
    };
    match value {
        Expr::Path(path) => path
            .path
            .get_ident()
            .cloned()
            .map(|i| vec![i])
            .ok_or_else(invalid),
        Expr::Field(field) => {
            let mut path = field_path(key, &field.base)?;
            match &field.member {
                syn::Member::Named(ident) => path.push(ident.clone()),
                syn::Member::Unnamed(_) => return Err(invalid()),
            }
            Ok(path)
        }
        _ => Err(invalid()),
    }
}

const BACKOFF_FORMS: &str = "`immediate`, `fixed(\"5s\")`, `incremental(base = \"1s\", step = \"2s\")` or `exponential(base = \"200ms\", max = \"5m\")`";

fn backoff(value: &Expr) -> syn::Result<Backoff> {
    let invalid = |span: Span| syn::Error::new(span, format!("`backoff` must be {BACKOFF_FORMS}"));
    match value {
        Expr::Path(path) if path.path.is_ident("immediate") => Ok(Backoff::Immediate),
        Expr::Call(call) => {
            let Expr::Path(function) = &*call.func else {
                return Err(invalid(call.func.span()));
            };
            let Some(kind) = function.path.get_ident() else {
                return Err(invalid(function.span()));
            };
            let args: Vec<&Expr> = call.args.iter().collect();
            match kind.to_string().as_str() {
                "fixed" => match args.as_slice() {
                    [delay] => Ok(Backoff::Fixed(values::duration("fixed", delay)?)),
                    _ => Err(syn::Error::new(
                        call.span(),
                        "`fixed` takes one duration: fixed(\"5s\")",
                    )),
                },
                "incremental" => {
                    let named = named_args(&args, &["base", "step"])?;
                    Ok(Backoff::Incremental {
                        base: required_duration(&named, "base", call.span())?,
                        step: required_duration(&named, "step", call.span())?,
                    })
                }
                "exponential" => {
                    let named = named_args(&args, &["base", "max", "jitter"])?;
                    let base = required_duration(&named, "base", call.span())?;
                    let max = required_duration(&named, "max", call.span())?;
                    if base == 0 || max < base {
                        return Err(syn::Error::new(
                            call.span(),
                            "exponential backoff needs 0 < base <= max",
                        ));
                    }
                    let jitter = named
                        .iter()
                        .find(|(key, _)| key == "jitter")
                        .map(|(_, expr)| values::boolean("jitter", expr))
                        .transpose()?;
                    Ok(Backoff::Exponential { base, max, jitter })
                }
                _ => Err(invalid(kind.span())),
            }
        }
        _ => Err(invalid(value.span())),
    }
}

/// `key = value` arguments of a call, each once, keys from `valid`.
fn named_args<'a>(args: &[&'a Expr], valid: &[&str]) -> syn::Result<Vec<(String, &'a Expr)>> {
    let mut named: Vec<(String, &Expr)> = Vec::new();
    for arg in args {
        let Expr::Assign(assign) = arg else {
            return Err(syn::Error::new(
                arg.span(),
                format!(
                    "expected `name = value`, with names from: {}",
                    valid.join(", ")
                ),
            ));
        };
        let key = match &*assign.left {
            Expr::Path(path) => path.path.get_ident().map(ToString::to_string),
            _ => None,
        };
        let Some(key) = key.filter(|key| valid.contains(&key.as_str())) else {
            return Err(syn::Error::new(
                assign.left.span(),
                format!(
                    "unknown argument; valid arguments are: {}",
                    valid.join(", ")
                ),
            ));
        };
        if named.iter().any(|(seen, _)| *seen == key) {
            return Err(syn::Error::new(
                assign.left.span(),
                format!("duplicate argument `{key}`"),
            ));
        }
        named.push((key, &assign.right));
    }
    Ok(named)
}

fn required_duration(named: &[(String, &Expr)], key: &str, span: Span) -> syn::Result<u64> {
    match named.iter().find(|(name, _)| name == key) {
        Some((_, expr)) => values::duration(key, expr),
        None => Err(syn::Error::new(span, format!("missing `{key} = \"...\"`"))),
    }
}

fn breaker(meta: &Meta) -> syn::Result<Breaker> {
    let (inner, span) = group(
        meta,
        BREAKER_KEYS,
        "`circuit_breaker` expects arguments: circuit_breaker(failure_rate = 0.2, min_attempts = 20, window = \"60s\", open_for = \"5m\")",
    )?;
    let mut breaker = Breaker {
        failure_rate: f64::NAN,
        min_attempts: 20,
        window: 60_000,
        open_for: 300_000,
    };
    for (key, value) in &inner {
        match key.as_str() {
            "failure_rate" => {
                let rate = values::number(key, value)?;
                if !(rate > 0.0 && rate <= 1.0) {
                    return Err(syn::Error::new(
                        value.span(),
                        "`failure_rate` must be greater than 0 and at most 1",
                    ));
                }
                breaker.failure_rate = rate;
            }
            "min_attempts" => {
                breaker.min_attempts = values::integer(key, value, 1, u64::from(u32::MAX))?
            }
            "window" => breaker.window = positive_duration(key, value)?,
            "open_for" => breaker.open_for = positive_duration(key, value)?,
            _ => unreachable!("key_of accepts only breaker keys"),
        }
    }
    if breaker.failure_rate.is_nan() {
        return Err(syn::Error::new(
            span,
            "`circuit_breaker` needs `failure_rate = ...` (0 < rate <= 1)",
        ));
    }
    Ok(breaker)
}

fn positive_duration(key: &str, value: &Expr) -> syn::Result<u64> {
    let ms = values::duration(key, value)?;
    if ms == 0 {
        return Err(syn::Error::new(
            value.span(),
            format!("`{key}` must be longer than 0"),
        ));
    }
    Ok(ms)
}

fn autoscale(meta: &Meta) -> syn::Result<Autoscale> {
    let (inner, span) = group(
        meta,
        AUTOSCALE_KEYS,
        "`autoscale` expects arguments: autoscale(min = 1, max = 50, target_latency = \"10s\")",
    )?;
    let (mut min, mut max, mut target_latency) = (1, None, None);
    for (key, value) in &inner {
        match key.as_str() {
            "min" => min = values::integer(key, value, 1, u64::from(u32::MAX))?,
            "max" => {
                max = Some((
                    values::integer(key, value, 1, u64::from(u32::MAX))?,
                    value.span(),
                ))
            }
            "target_latency" => target_latency = Some(positive_duration(key, value)?),
            _ => unreachable!("key_of accepts only autoscale keys"),
        }
    }
    let (Some((max, max_span)), Some(target_latency)) = (max, target_latency) else {
        return Err(syn::Error::new(
            span,
            "`autoscale` needs `max = N` and `target_latency = \"...\"`",
        ));
    };
    if max < min {
        return Err(syn::Error::new(
            max_span,
            format!("`max` must be at least `min` ({min})"),
        ));
    }
    Ok(Autoscale {
        min,
        max,
        target_latency,
    })
}

fn unique(meta: &Meta) -> syn::Result<Unique> {
    let (inner, span) = group(
        meta,
        UNIQUE_KEYS,
        "`unique` expects arguments: unique(key = field, within = \"10m\", until = \"finished\")",
    )?;
    let (mut key, mut within, mut until) = (None, None, "finished");
    for (name, value) in &inner {
        match name.as_str() {
            "key" => key = Some((field_path(name, value)?, value.span())),
            "within" => within = Some(positive_duration(name, value)?),
            "until" => {
                let lit = values::string(name, value)?;
                until = match lit.value().as_str() {
                    "started" => "started",
                    "finished" => "finished",
                    "expired" => "expired",
                    _ => {
                        return Err(syn::Error::new(
                            lit.span(),
                            "`until` is \"started\" (unique while queued), \"finished\" (until it succeeded or was dead-lettered) or \"expired\" (for the whole window)",
                        ));
                    }
                };
            }
            _ => unreachable!("key_of accepts only unique keys"),
        }
    }
    let Some(within) = within else {
        return Err(syn::Error::new(
            span,
            "`unique` needs `within = \"...\"`: how long the lock lasts at most",
        ));
    };
    Ok(Unique { key, within, until })
}

/// The `key = value` arguments of a nested group such as
/// `circuit_breaker(...)`: each key once, keys from `keys`. Returns them
/// with the group's span.
fn group(meta: &Meta, keys: &[&str], usage: &str) -> syn::Result<(Vec<(String, Expr)>, Span)> {
    let Meta::List(list) = meta else {
        return Err(syn::Error::new(meta.span(), usage));
    };
    let inner = list.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)?;
    let mut pairs: Vec<(String, Expr)> = Vec::new();
    for meta in &inner {
        let key = key_of(meta, keys)?;
        if pairs.iter().any(|(seen, _)| *seen == key) {
            return Err(syn::Error::new(
                meta.path().span(),
                format!("duplicate argument `{key}`"),
            ));
        }
        let value = value_of(&key, meta)?.clone();
        pairs.push((key, value));
    }
    Ok((pairs, list.span()))
}
