//! `exemplar reindex`: starts a re-index on a running server (`POST /admin/reindex`) and
//! follows it (`GET /admin/reindex`) with a progress bar until the switch.

use crate::cli::{ModelArgs, ReindexArgs};
use crate::progress::Progress;
use crate::reindex::{IndexSpec, SpecChange};
use anyhow::{bail, Context};
use serde_json::Value;
use std::time::Duration;

/// The model flags given on the command line or in the environment (the others keep
/// the server's settings).
pub fn explicit_model_flags() -> Vec<&'static str> {
    use clap::parser::ValueSource;
    use clap::CommandFactory;
    let Ok(matches) = crate::cli::Cli::command().try_get_matches_from(std::env::args_os()) else {
        return Vec::new();
    };
    let Some(("reindex", sub)) = matches.subcommand() else {
        return Vec::new();
    };
    [
        "model",
        "weights",
        "geometry",
        "pooling",
        "local_features",
        "local_keypoints",
    ]
    .into_iter()
    .filter(|id| {
        matches!(
            sub.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    })
    .collect()
}

/// The change `flags` asks for: only the `explicit` ones.
fn requested_change(flags: &ModelArgs, explicit: &[&str]) -> SpecChange {
    let spec = IndexSpec::of(flags);
    let given = |id: &str| explicit.contains(&id);
    SpecChange {
        model: given("model").then(|| spec.model.clone()),
        weights: given("weights").then(|| spec.weights.clone()).flatten(),
        geometry: given("geometry").then(|| spec.geometry.clone()),
        pooling: given("pooling").then(|| spec.pooling.clone()),
        local_features: given("local_features").then(|| spec.local_features.clone()),
        local_keypoints: given("local_keypoints").then_some(spec.local_keypoints),
    }
}

fn change_json(change: &SpecChange) -> Value {
    let mut body = serde_json::Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value {
            body.insert(key.into(), v);
        }
    };
    put("model", change.model.clone().map(Value::from));
    put("weights", change.weights.clone().map(Value::from));
    put("geometry", change.geometry.clone().map(Value::from));
    put("pooling", change.pooling.clone().map(Value::from));
    put(
        "local_features",
        change.local_features.clone().map(Value::from),
    );
    put("local_keypoints", change.local_keypoints.map(Value::from));
    Value::Object(body)
}

/// A running server's admin route (`/admin/reindex`, `/admin/train`).
pub(super) struct Client {
    pub agent: ureq::Agent,
    pub base: String,
    pub key: Option<String>,
    pub path: &'static str,
}

impl Client {
    pub fn new(base: &str, key: Option<&str>, path: &'static str) -> Self {
        Self {
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(600))
                .build(),
            base: base.to_string(),
            key: key.map(str::to_string),
            path,
        }
    }

    pub fn call(&self, method: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base.trim_end_matches('/'), self.path);
        let mut request = self.agent.request(method, &url);
        if let Some(key) = &self.key {
            request = request.set("Authorization", &format!("Bearer {key}"));
        }
        let response = match body {
            Some(body) => request.send_json(body.clone()),
            None => request.call(),
        };
        match response {
            Ok(r) => r.into_json().context("reading the server's answer"),
            Err(ureq::Error::Status(code, r)) => {
                let answer: Value = r.into_json().unwrap_or(Value::Null);
                let message = answer["error"].as_str().unwrap_or("no error text");
                bail!("{method} {url}: {code}: {message}")
            }
            Err(e) => Err(e).with_context(|| format!("{method} {url}")),
        }
    }
}

fn finished(status: &Value) -> bool {
    matches!(
        status["state"].as_str(),
        Some("switched" | "failed" | "cancelled" | "idle")
    )
}

pub fn run(args: &ReindexArgs, flags: &ModelArgs, explicit: &[&str]) -> anyhow::Result<()> {
    let client = Client::new(&args.server, args.api_key.as_deref(), "/admin/reindex");
    if args.status {
        println!("{}", client.call("GET", None)?);
        return Ok(());
    }
    if args.cancel {
        println!("{}", client.call("DELETE", None)?);
        return Ok(());
    }
    let change = requested_change(flags, explicit);
    let mut status = client.call("POST", Some(&change_json(&change)))?;
    eprintln!(
        "re-index job {} started: {}",
        status["job"],
        status["spec"].as_str().unwrap_or_default()
    );
    if args.detach {
        println!("{status}");
        return Ok(());
    }
    let total = status["total"].as_u64().unwrap_or(0) as usize;
    let mut progress = Progress::new("re-indexing", total);
    let mut shown = 0u64;
    while !finished(&status) {
        std::thread::sleep(Duration::from_millis(500));
        status = client.call("GET", None)?;
        let done = status["done"].as_u64().unwrap_or(0);
        if done > shown {
            progress.advance((done - shown) as usize);
            shown = done;
        }
    }
    progress.finish();
    println!("{status}");
    match status["state"].as_str() {
        Some("switched") => Ok(()),
        _ => bail!(
            "the re-index did not switch: {}",
            status["error"].as_str().unwrap_or("cancelled")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn only_the_flags_given_are_sent() {
        let cli = crate::cli::Cli::parse_from(["exemplar", "reindex", "--local-features", "orb"]);
        let change = requested_change(&cli.model, &["local_features"]);
        assert_eq!(
            change_json(&change),
            serde_json::json!({"local_features": "orb"})
        );
        assert_eq!(
            change_json(&requested_change(&cli.model, &[])),
            serde_json::json!({})
        );
    }
}
