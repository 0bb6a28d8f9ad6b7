//! What `eval` and `calibrate` print: the JSON of each setting, the rates a verdict rule
//! is chosen by, the fold-honest report, and one line per result on stderr.

use exemplar_core::VerdictRule;
use exemplar_eval::folds::{choose_on_all, cross_validate, Tolerance};
use exemplar_eval::{GroundTruth, QueryOutcome};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

pub(super) fn same_item_json(
    truth: &GroundTruth,
    same: &BTreeMap<usize, Vec<usize>>,
    root: &Path,
) -> Value {
    let GroundTruth::QueryReference { catalogue, .. } = truth else {
        return json!([]);
    };
    let name = |i: usize| {
        let p = &catalogue[i];
        p.strip_prefix(root).unwrap_or(p).display().to_string()
    };
    same.iter()
        .flat_map(|(r, ds)| ds.iter().map(move |d| json!([name(*r), name(*d)])))
        .collect()
}

/// Each fold reported under the setting chosen on the other folds, and all of them
/// pooled (every query once, under a setting its fold did not choose).
pub(super) fn folded_report(
    projection: &str,
    settings: &[(Value, Vec<QueryOutcome>)],
    folds: &[usize],
    two_stage: bool,
    tolerance: &Tolerance,
) -> Value {
    let outcomes: Vec<Vec<QueryOutcome>> = settings.iter().map(|s| s.1.clone()).collect();
    let shortlists: Vec<usize> = settings
        .iter()
        .map(|s| s.0["setting"]["shortlist"].as_u64().unwrap_or(0) as usize)
        .collect();
    let (reports, pooled) = cross_validate(&shortlists, &outcomes, folds, two_stage, tolerance);
    let (on_all, on_all_figures) = choose_on_all(&shortlists, &outcomes, two_stage, tolerance);
    let setting = |i: usize| settings[i].0["setting"].clone();
    json!({
        "projection": projection,
        "folded": true,
        "folds": reports.len(),
        "tolerance": tolerance,
        "per_fold": reports.iter().map(|r| json!({
            "fold": r.fold,
            "chosen": setting(r.chosen),
            "tuning_figures": r.tuning,
            "held_out_figures": r.held_out,
        })).collect::<Vec<_>>(),
        "held_out": pooled,
        // The defaults a user would set from this data: figures on what they were tuned on.
        "chosen_on_all_queries": {
            "setting": setting(on_all),
            "tuned_on_reported": true,
            "figures": on_all_figures,
        },
    })
}

pub(super) fn folded_line(row: &Value) -> String {
    let f = &row["held_out"];
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    format!(
        "{} {}-fold, each fold on settings chosen on the others: top-1 {:.4} ({}), wrong answer {:.4}, false accept {:.4}, open set unknown {:.4}, first stage recall@100 {:.4}; chosen: {}; on all queries (tuned on what it reports): {} top-1 {:.4}",
        row["projection"].as_str().unwrap_or("?"),
        row["folds"],
        number(&f["top1"]),
        f["by_attribute_top1"]
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k} {:.3}", number(v))).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        number(&f["wrong_answer_rate"]),
        number(&f["false_accept_rate"]),
        number(&f["open_set_unknown_rate"]),
        number(&f["first_stage_recall"]["100"]),
        row["per_fold"]
            .as_array()
            .map(|a| a.iter().map(|r| r["chosen"].to_string()).collect::<Vec<_>>().join(" / "))
            .unwrap_or_default(),
        row["chosen_on_all_queries"]["setting"],
        number(&row["chosen_on_all_queries"]["figures"]["top1"]),
    )
}

pub(super) fn settings_row_setting(shortlist: usize, rule: &VerdictRule) -> Value {
    json!({
        "shortlist": shortlist,
        "min_inliers": rule.min_inliers,
        "min_coverage": rule.min_coverage,
        "min_in_frame": rule.min_in_frame,
        "min_in_frame_off_centre": rule.min_in_frame_off_centre,
    })
}

/// A calibration row: the rule and the rates it is chosen by.
pub(super) fn rates(row: &Value, rule: &VerdictRule, shortlist: usize) -> Value {
    let u = &row["unknown"];
    let count = |key: &str| u[key].as_u64().unwrap_or(0) as f64;
    let known = count("known_queries");
    let false_reject = count("known_answered_unknown") / known.max(1.0);
    let top1 = row["top1"].as_f64().unwrap_or(f64::NAN);
    // Should be `unknown`: every open-set search and every query without a reference.
    let should_reject = count("open_set_queries") + count("unknown_queries");
    let accepted_wrongly = count("open_set_queries") - count("open_set_answered_unknown")
        + count("unknown_queries")
        - count("unknown_answered_unknown");
    json!({
        "projection": row["projection"],
        "shortlist": shortlist,
        "min_inliers": rule.min_inliers,
        "min_coverage": rule.min_coverage,
        "min_in_frame": rule.min_in_frame,
        "min_in_frame_off_centre": rule.min_in_frame_off_centre,
        "top1": top1,
        "by_attribute_top1": row["by_attribute"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v["top1"].clone())).collect::<serde_json::Map<_, _>>()),
        "false_reject_rate": false_reject,
        // Known queries answered with the wrong item.
        "wrong_answer_rate": (1.0 - top1 - false_reject).max(0.0),
        "false_accept_rate": accepted_wrongly / should_reject.max(1.0),
        "known_queries": known,
        "should_be_unknown": should_reject,
    })
}

pub(super) fn rates_line(r: &Value) -> String {
    format!(
        "{} shortlist {} inliers>={} coverage>={} in-frame>={}:{}: top-1 {:.3}, false reject {:.3}, wrong answer {:.3}, false accept {:.3} (of {} that should be unknown)",
        r["projection"].as_str().unwrap_or("?"),
        r["shortlist"],
        r["min_inliers"],
        r["min_coverage"],
        r["min_in_frame"],
        r["min_in_frame_off_centre"],
        r["top1"].as_f64().unwrap_or(f64::NAN),
        r["false_reject_rate"].as_f64().unwrap_or(f64::NAN),
        r["wrong_answer_rate"].as_f64().unwrap_or(f64::NAN),
        r["false_accept_rate"].as_f64().unwrap_or(f64::NAN),
        r["should_be_unknown"],
    )
}

pub(super) fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

pub(super) fn summary_line(r: &Value) -> String {
    let name = r["projection"].as_str().unwrap_or("?");
    let dim = &r["dim"];
    match r.get("map") {
        Some(map) => format!(
            "{name} ({dim}-d): mAP {:.4}",
            map.as_f64().unwrap_or(f64::NAN)
        ),
        None => format!(
            "{name} ({dim}-d): top-1 {:.4} recall@5 {:.4} recall@20 {:.4} by {}: {}",
            r["top1"].as_f64().unwrap_or(f64::NAN),
            r["recall"]["5"].as_f64().unwrap_or(f64::NAN),
            r["recall"]["20"].as_f64().unwrap_or(f64::NAN),
            r["attribute"].as_str().unwrap_or("-"),
            r["by_attribute"]
                .as_object()
                .map(|m| m
                    .iter()
                    .map(|(k, v)| format!("{k} {:.2}", v["top1"].as_f64().unwrap_or(f64::NAN)))
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ) + &match r.get("unknown") {
            Some(u) => format!(
                "; shortlist recall@100 {:.4} @300 {:.4}; answered unknown: {}/{} known, {}/{} unknown; open set unknown {:.3}",
                r["first_stage"]["recall"]["100"].as_f64().unwrap_or(f64::NAN),
                r["first_stage"]["recall"]["300"].as_f64().unwrap_or(f64::NAN),
                u["known_answered_unknown"],
                u["known_queries"],
                u["unknown_answered_unknown"],
                u["unknown_queries"],
                u["open_set_unknown_rate"].as_f64().unwrap_or(f64::NAN),
            ),
            None => String::new(),
        },
    }
}
