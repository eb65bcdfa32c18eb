//! Two nodes sharing tenants and destinations through Redis: a change made on
//! one node reaches the other's routing table and shards; a restart reloads
//! from Redis; an unreachable Redis refuses the start.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::*;

async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn two_nodes_share_entities_through_redis() {
    let dep = format!("e2e{}", std::process::id() as u64 * 1000 + free_port() as u64);
    let env = [("REDIS_HOST", "127.0.0.1"), ("DEPLOYMENT_ID", dep.as_str())];
    let a = Server::start(&env).await;
    let mut b = Server::start(&env).await;
    let (api_a, api_b) = (Api::admin(&a), Api::admin(&b));
    let rx = Receiver::start().await;

    api_a.tenant("t1").await;
    let d = api_a.webhook("t1", &rx.url("/r"), json!({})).await;
    let did = d["id"].as_str().unwrap().to_string();
    eventually("node B sees the destination", async || {
        api_b
            .get("/tenants/t1/destinations")
            .await
            .body
            .as_array()
            .is_some_and(|v| v.len() == 1)
    })
    .await;
    // B delivers to a destination created on A, signed with the same secret.
    let r = api_b
        .publish(json!({"tenant_id": "t1", "topic": "x", "data": {"from": "b"}}))
        .await;
    assert_eq!(r.body["destination_ids"], json!([did]));
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    let secret = d["credentials"]["secret"].as_str().unwrap();
    assert_eq!(
        got[0].header("x-outpost-signature").unwrap(),
        format!("v0={}", hmac_hex(secret.as_bytes(), &got[0].body))
    );

    // Disabling on A stops matching on B.
    api_a.put(&format!("/tenants/t1/destinations/{did}/disable")).await;
    eventually("node B sees the destination disabled", async || {
        api_b.get(&format!("/tenants/t1/destinations/{did}")).await.body["disabled_at"].is_string()
    })
    .await;
    let r = api_b
        .publish(json!({"tenant_id": "t1", "topic": "x", "data": {}}))
        .await;
    assert_eq!(r.body["destination_ids"], json!([]));

    // A restarted node loads everything from Redis.
    b.kill9();
    b.spawn().await;
    assert_eq!(api_b.get(&format!("/tenants/t1/destinations/{did}")).await.status, 200);

    // Deleting the tenant on A removes it on B.
    api_a.call("DELETE", "/tenants/t1", None).await;
    eventually("node B sees the tenant deleted", async || {
        api_b.get("/tenants/t1").await.status == 404
    })
    .await;
}

#[test]
fn unreachable_redis_refuses_start_without_leaking_the_password() {
    let (code, err) = Server::run_once(&[
        ("API_KEY", "k"),
        ("AES_ENCRYPTION_SECRET", "x"),
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", "1"),
        ("REDIS_PASSWORD", "hunter2pw"),
        ("OUTRIDER_BACKEND_CONNECT_TIMEOUT_SECONDS", "1"),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("REDIS_HOST") && err.contains("cannot reach Redis"),
        "{err}"
    );
    assert!(!err.contains("hunter2pw"), "{err}");
}
