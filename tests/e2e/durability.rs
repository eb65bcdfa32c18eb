//! kill -9 while publishing: every event that got a 2xx is delivered after a
//! restart (at least once), and its attempts are queryable.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn kill9_mid_publish_loses_no_accepted_event() {
    let mut s = Server::start(&[("RETRY_SCHEDULE", "1,1,1,1,1")]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    // The receiver fails every delivery until the restart, so every accepted
    // event is still pending (in the retry schedule) when the process dies.
    *rx.state.always.lock().unwrap() = Some(503);
    api.tenant("t1").await;
    api.webhook("t1", &rx.url("/k"), json!({})).await;

    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let api = api.clone();
        let accepted = accepted.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10_000 {
                let id = format!("evt_{w}_{i}");
                let r = reqwest::Client::new()
                    .post(format!("{}/publish", api.base))
                    .bearer_auth(&api.token)
                    .json(&json!({"id": id, "tenant_id": "t1", "topic": "k", "data": {"w": w, "i": i}}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 202 => accepted.lock().unwrap().push(id),
                    _ => break, // the server is gone
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let accepted: Vec<String> = accepted.lock().unwrap().clone();
    let failed_before_kill = rx.count();
    assert!(accepted.len() > 50, "published only {}", accepted.len());
    // Only deliveries after the restart count.
    rx.state.got.lock().unwrap().clear();
    *rx.state.always.lock().unwrap() = None;
    s.spawn().await;

    let want: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let got: HashSet<String> = rx.got().iter().filter_map(|g| g.header("x-outpost-event-id")).collect();
        let missing = want.iter().filter(|id| !got.contains(**id)).count();
        if missing == 0 || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lost: Vec<&&str> = want.iter().filter(|id| !delivered.contains(**id)).collect();
    let total = rx.count();
    eprintln!(
        "kill -9 durability: accepted={} failed_attempts_before_kill={} delivered_after_restart={} deliveries_total={} duplicates={} lost={}",
        accepted.len(),
        failed_before_kill,
        want.iter().filter(|id| delivered.contains(**id)).count(),
        total,
        total - delivered.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "lost {} accepted events, e.g. {:?}",
        lost.len(),
        lost.iter().take(5).collect::<Vec<_>>()
    );
    // Their attempts are queryable after the restart.
    let some = accepted.last().unwrap();
    let a = api
        .wait_attempts(&format!("event_id={some}"), Duration::from_secs(10), |m| !m.is_empty())
        .await;
    assert!(!a.is_empty(), "attempt for {some} is queryable");
}
