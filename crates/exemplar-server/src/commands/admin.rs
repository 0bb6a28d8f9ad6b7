//! A running server's admin job routes (`/admin/reindex`, `/admin/train`) as the CLI
//! drives them: start, show, cancel, follow with a progress bar.

use crate::cli::AdminJobArgs;
use crate::progress::Progress;
use anyhow::{bail, Context};
use serde_json::Value;
use std::time::Duration;

/// A running server's admin route (`/admin/reindex`, `/admin/train`).
pub(super) struct Client {
    agent: ureq::Agent,
    base: String,
    key: Option<String>,
    path: &'static str,
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

    /// The job's status polled until `finished`, with a progress bar (`label`) fed by
    /// its `done` and `total` fields.
    pub fn follow(
        &self,
        mut status: Value,
        label: &'static str,
        (done, total): (&str, &str),
        finished: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let mut progress = Progress::new(label, status[total].as_u64().unwrap_or(0) as usize);
        let mut shown = 0u64;
        while !finished(&status) {
            std::thread::sleep(Duration::from_millis(500));
            status = self.call("GET", None)?;
            let now = status[done].as_u64().unwrap_or(0);
            if now > shown {
                progress.advance((now - shown) as usize);
                shown = now;
            }
        }
        progress.finish();
        Ok(status)
    }

    /// `--status` and `--cancel`: the answer printed; `None` when neither was asked.
    pub fn status_or_cancel(&self, job: &AdminJobArgs) -> anyhow::Result<Option<()>> {
        let method = match (job.status, job.cancel) {
            (true, _) => "GET",
            (_, true) => "DELETE",
            _ => return Ok(None),
        };
        println!("{}", self.call(method, None)?);
        Ok(Some(()))
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
