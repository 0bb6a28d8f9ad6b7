//! `exemplar reindex`: starts a re-index on a running server (`POST /admin/reindex`) and
//! follows it (`GET /admin/reindex`) with a progress bar until the switch.

use super::admin::Client;
use crate::cli::{ModelArgs, ReindexArgs};
use crate::reindex::{IndexSpec, SpecChange};
use anyhow::bail;
use serde_json::Value;

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

fn finished(status: &Value) -> bool {
    matches!(
        status["state"].as_str(),
        Some("switched" | "failed" | "cancelled" | "idle")
    )
}

pub fn run(args: &ReindexArgs, flags: &ModelArgs, explicit: &[&str]) -> anyhow::Result<()> {
    let job = &args.job;
    let client = Client::new(&job.server, job.api_key.as_deref(), "/admin/reindex");
    if client.status_or_cancel(job)?.is_some() {
        return Ok(());
    }
    let change = requested_change(flags, explicit);
    let status = client.call("POST", Some(&change_json(&change)))?;
    eprintln!(
        "re-index job {} started: {}",
        status["job"],
        status["spec"].as_str().unwrap_or_default()
    );
    if job.detach {
        println!("{status}");
        return Ok(());
    }
    let status = client.follow(status, "re-indexing", ("done", "total"), finished)?;
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
