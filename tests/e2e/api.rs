//! API contract: auth, error shapes, validation, tenant isolation, CRUD and
//! merge-patch semantics, pagination, configuration errors.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

#[tokio::test]
async fn health_auth_and_unknown_paths() {
    let s = Server::start(&[]).await;
    let r = reqwest::get(format!("http://127.0.0.1:{}/healthz", s.port))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let h = Api::with_token(&s, "");
    let r = h.get("/healthz").await;
    assert_eq!(r.body["status"], "healthy");
    let r = h.get("/tenants").await;
    assert_eq!((r.status, r.text.as_str()), (401, ""), "no token → empty 401");
    let r = Api::with_token(&s, "wrong").get("/tenants").await;
    assert_eq!((r.status, r.text.as_str()), (401, ""));
    let r = Api::admin(&s).get("/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, json!({"status": 404, "message": "not found"}));
}

#[tokio::test]
async fn bad_input_gets_clear_4xx() {
    let s = Server::start(&[("TOPICS", "user.created,user.deleted")]).await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let r = api.raw("POST", "/publish", "{\"tenant_id\":").await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body, json!({"status": 422, "message": "invalid JSON"}));
    let r = api.raw("POST", "/publish", "").await;
    assert_eq!(r.status, 422);
    let r = api.publish(json!({"topic": "user.created"})).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["data"], json!(["tenant_id is required", "data is required"]));
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "user.created", "data": [1]}))
        .await;
    assert_eq!(r.body["data"], json!(["data must be a valid JSON object"]));
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "nope", "data": {}}))
        .await;
    assert_eq!((r.status, r.body["data"].clone()), (422, json!(["topic is invalid"])));
    let r = api.publish(json!({"tenant_id": "t1", "data": {}})).await;
    assert_eq!((r.status, r.body["data"].clone()), (422, json!(["topic is required"])));
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "user.created", "metadata": {"a": 1}, "data": {}}))
        .await;
    assert_eq!(
        (r.status, r.body["message"].clone()),
        (422, json!("invalid JSON")),
        "wrong types"
    );
    let r = api
        .publish(json!({"tenant_id": 5, "topic": "user.created", "data": {}}))
        .await;
    assert_eq!(r.status, 422);
    let r = api
        .publish(json!({"tenant_id": "ghost", "topic": "user.created", "data": {}}))
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["message"], "tenant not found");
    let huge = format!(
        "{{\"tenant_id\":\"t1\",\"topic\":\"user.created\",\"data\":{{\"x\":\"{}\"}}}}",
        "a".repeat(2 * 1024 * 1024)
    );
    let r = api.raw("POST", "/publish", &huge).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.body["status"], 413);

    // Destinations.
    let r = api.post("/tenants/t1/destinations", json!({"config": {}})).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["data"], json!(["type is required", "topics is required"]));
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"type": "webhook", "topics": 7, "config": {"url": "https://x.example"}}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["message"].clone()),
        (422, json!("validation failed: invalid topics format"))
    );
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"type": "webhook", "topics": ["nope"], "config": {"url": "https://x.example"}}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["message"].clone()),
        (422, json!("validation failed: invalid topics"))
    );
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"type": "webhook", "topics": "*", "config": {}}),
        )
        .await;
    assert_eq!(
        r.body,
        json!({"status": 422, "message": "validation error", "data": ["config.url is required"]})
    );
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"type": "carrier_pigeon", "topics": "*"}),
        )
        .await;
    assert_eq!(r.status, 422);
    let r = api
        .post(
            "/tenants/ghost/destinations",
            json!({"type": "webhook", "topics": "*", "config": {"url": "https://x.example"}}),
        )
        .await;
    assert_eq!((r.status, r.body["message"].clone()), (404, json!("tenant not found")));
    let r = api.get("/tenants/t1/destinations/nope").await;
    assert_eq!((r.status, r.text.as_str()), (404, ""));
    // Query validation.
    let r = api.get("/events?dir=sideways").await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["data"], json!({"query.dir": "must be 'asc' or 'desc'"}));
    let r = api.get("/events?next=abc&prev=def").await;
    assert_eq!(r.status, 400);
    let r = api.get("/events?next=%21%21").await;
    assert_eq!((r.status, r.body["message"].clone()), (400, json!("invalid cursor")));
    let r = api.get("/events?time[gte]=yesterday").await;
    assert_eq!(r.status, 422);
    let r = api.get("/events/nope").await;
    assert_eq!(r.body, json!({"status": 404, "message": "event not found"}));
    let r = api.get("/topics").await;
    assert_eq!(r.body, json!(["user.created", "user.deleted"]));
}

#[tokio::test]
async fn tenants_crud_and_listing() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    let r = api
        .call("PUT", "/tenants/acme", Some(json!({"metadata": {"plan": "pro"}})))
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["metadata"], json!({"plan": "pro"}));
    assert_eq!(r.body["destinations_count"], 0);
    let r = api.put("/tenants/acme").await;
    assert_eq!(r.status, 200, "update");
    assert!(
        r.body.get("metadata").is_none(),
        "PUT without metadata clears it: {}",
        r.text
    );
    api.webhook("acme", "https://a.example/h", json!({"topics": ["b.x", "a.y"]}))
        .await;
    let r = api.get("/tenants/acme").await;
    assert_eq!(r.body["destinations_count"], 1);
    assert_eq!(r.body["topics"], json!(["a.y", "b.x"]));
    for i in 0..4 {
        api.tenant(&format!("t{i}")).await;
    }
    let r = api.get("/tenants?limit=2").await;
    assert_eq!(r.body["count"], 5);
    assert_eq!(r.body["models"].as_array().unwrap().len(), 2);
    let mut seen: Vec<String> = r.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().into())
        .collect();
    let mut next = r.body["pagination"]["next"].as_str().map(String::from);
    while let Some(c) = next {
        let r = api.get(&format!("/tenants?limit=2&next={c}")).await;
        seen.extend(
            r.body["models"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_string()),
        );
        next = r.body["pagination"]["next"].as_str().map(String::from);
    }
    // Newest first: t3 was created last.
    assert_eq!(seen, vec!["t3", "t2", "t1", "t0", "acme"]);
    // Oldest first, page by page forward, then back with `prev`.
    let ids = |r: &Resp| -> Vec<String> {
        r.body["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    let mut pages = vec![api.get("/tenants?limit=2&dir=asc").await];
    while let Some(c) = pages.last().unwrap().body["pagination"]["next"]
        .as_str()
        .map(String::from)
    {
        pages.push(api.get(&format!("/tenants?limit=2&dir=asc&next={c}")).await);
    }
    let forward: Vec<Vec<String>> = pages.iter().map(ids).collect();
    assert_eq!(forward, vec![vec!["acme", "t0"], vec!["t1", "t2"], vec!["t3"]]);
    assert!(pages[0].body["pagination"]["prev"].is_null());
    let mut back = vec![ids(pages.last().unwrap())];
    let mut prev = pages.last().unwrap().body["pagination"]["prev"]
        .as_str()
        .map(String::from);
    while let Some(c) = prev {
        let r = api.get(&format!("/tenants?limit=2&dir=asc&prev={c}")).await;
        back.push(ids(&r));
        prev = r.body["pagination"]["prev"].as_str().map(String::from);
    }
    back.reverse();
    assert_eq!(back, forward);
    let r = api.get("/tenants?id=t1&id=acme&id=nope").await;
    assert_eq!(ids(&r), vec!["t1", "acme"]);
    let r = api.get("/tenants?limit=0").await;
    assert_eq!(r.status, 400);
    let r = api.call("DELETE", "/tenants/acme", None).await;
    assert_eq!(r.body, json!({"success": true}));
    let r = api.get("/tenants/acme").await;
    assert_eq!((r.status, r.body["message"].clone()), (404, json!("tenant not found")));
}

#[tokio::test]
async fn destination_merge_patch_semantics() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let d = api
        .webhook("t1", "https://a.example/h", json!({"id": "des_1", "metadata": {"a": "1", "b": "2"}, "delivery_metadata": {"x": true}, "filter": {"data": {"k": 1}}}))
        .await;
    assert_eq!(d["id"], "des_1");
    assert_eq!(
        d["delivery_metadata"],
        json!({"x": "true"}),
        "values coerced to strings"
    );
    assert_eq!(d["target"], "https://a.example/h");
    let p = "/tenants/t1/destinations/des_1";
    let r = api.patch(p, json!({"metadata": {"a": null, "c": "3"}})).await;
    assert_eq!(r.body["metadata"], json!({"b": "2", "c": "3"}));
    let r = api.patch(p, json!({"metadata": {}})).await;
    assert_eq!(r.body["metadata"], json!({"b": "2", "c": "3"}), "{{}} is a no-op");
    let r = api.patch(p, json!({"delivery_metadata": null})).await;
    assert!(r.body.get("delivery_metadata").is_none(), "null clears");
    let r = api.patch(p, json!({"filter": {"data": {"k": 2}}})).await;
    assert_eq!(r.body["filter"], json!({"data": {"k": 2}}));
    let r = api.patch(p, json!({})).await;
    assert_eq!(r.body["filter"], json!({"data": {"k": 2}}), "omitted filter unchanged");
    let r = api.patch(p, json!({"filter": {}})).await;
    assert!(r.body.get("filter").is_none(), "{{}} clears the filter");
    let r = api
        .patch(
            p,
            json!({"topics": ["a", "a", "b"], "config": {"url": "https://b.example/h"}}),
        )
        .await;
    assert_eq!(r.body["topics"], json!(["a", "b"]));
    assert_eq!(r.body["config"]["url"], "https://b.example/h");
    let r = api.patch(p, json!({"type": "rabbitmq"})).await;
    assert_eq!(
        (r.status, r.body["message"].clone()),
        (422, json!("type cannot be updated"))
    );
    let r = api.patch(p, json!({"config": {"url": "not a url"}})).await;
    assert_eq!(r.status, 422);
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"id": "des_1", "type": "webhook", "topics": "*", "config": {"url": "https://a.example"}}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["message"].clone()),
        (400, json!("destination already exists"))
    );
    let r = api.get("/tenants/t1/destinations?topics=a").await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    let r = api.get("/tenants/t1/destinations?topics=zzz").await;
    assert_eq!(r.body.as_array().unwrap().len(), 0);
    let r = api.get("/tenants/t1/destinations?type=webhook").await;
    assert_eq!(r.body.as_array().unwrap().len(), 1);
    let r = api.call("DELETE", p, None).await;
    assert_eq!(r.body, json!({"success": true}));
    assert_eq!(api.get(p).await.status, 404);
}

#[tokio::test]
async fn max_destinations_per_tenant() {
    let s = Server::start(&[("MAX_DESTINATIONS_PER_TENANT", "2")]).await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    api.webhook("t1", "https://a.example/1", json!({})).await;
    api.webhook("t1", "https://a.example/2", json!({})).await;
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"type": "webhook", "topics": "*", "config": {"url": "https://a.example/3"}}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["message"].clone()),
        (400, json!("maximum number of destinations per tenant reached"))
    );
}

#[tokio::test]
async fn tenant_token_isolation() {
    let s = Server::start(&[]).await;
    let admin = Api::admin(&s);
    admin.tenant("t1").await;
    admin.tenant("t2").await;
    let rx = Receiver::start().await;
    let d1 = admin.webhook("t1", &rx.url("/1"), json!({})).await;
    let d2 = admin.webhook("t2", &rx.url("/2"), json!({})).await;
    let e1 = admin
        .publish(json!({"tenant_id": "t1", "topic": "x", "data": {"t": 1}}))
        .await;
    let e2 = admin
        .publish(json!({"tenant_id": "t2", "topic": "x", "data": {"t": 2}}))
        .await;
    rx.wait_for(2, std::time::Duration::from_secs(10)).await;
    admin
        .wait_attempts("", std::time::Duration::from_secs(10), |m| m.len() >= 2)
        .await;

    let r = admin.get("/tenants/t1/token").await;
    assert_eq!(r.body["tenant_id"], "t1");
    let token = r.body["token"].as_str().unwrap().to_string();
    // The token is HS256 with iss=outpost and sub=tenant, verifiable with the secret.
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_issuer(&["outpost"]);
    let claims = jsonwebtoken::decode::<Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(JWT_SECRET.as_bytes()),
        &v,
    )
    .unwrap();
    assert_eq!(claims.claims["sub"], "t1");

    let t1 = Api::with_token(&s, &token);
    assert_eq!(t1.get("/tenants/t1").await.status, 200);
    assert_eq!(
        t1.get("/tenants/t1/destinations").await.body.as_array().unwrap().len(),
        1
    );
    let r = t1.get("/tenants/t2").await;
    assert_eq!((r.status, r.text.as_str()), (403, ""));
    assert_eq!(
        t1.get(&format!("/tenants/t2/destinations/{}", d2["id"].as_str().unwrap()))
            .await
            .status,
        403
    );
    assert_eq!(
        t1.publish(json!({"tenant_id": "t1", "topic": "x", "data": {}}))
            .await
            .status,
        403,
        "publish is admin-only"
    );
    assert_eq!(t1.get("/tenants/t1/token").await.status, 403);
    let r = t1.get("/events").await;
    let ids: Vec<&str> = r.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tenant_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["t1"]);
    let r = t1.get("/events?tenant_id=t2").await;
    assert_eq!(r.status, 403);
    assert_eq!(
        r.body["message"],
        "tenant_id query parameter does not match authenticated tenant"
    );
    let r = t1.get(&format!("/events/{}", e2.body["id"].as_str().unwrap())).await;
    assert_eq!(r.status, 404, "another tenant's event is invisible");
    assert_eq!(
        t1.get(&format!("/events/{}", e1.body["id"].as_str().unwrap()))
            .await
            .status,
        200
    );
    let r = t1.get("/attempts").await;
    assert!(r.body["models"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["tenant_id"] == "t1"));
    let r = t1
        .post("/retry", json!({"event_id": e2.body["id"], "destination_id": d2["id"]}))
        .await;
    assert_eq!(r.status, 404, "cannot retry another tenant's event");
    let r = t1.post("/tenants/t1/destinations", json!({"type": "webhook", "topics": "*", "config": {"url": "https://a.example"}, "credentials": {"secret": "mine"}})).await;
    assert_eq!(r.status, 422);
    assert_eq!(r.body["data"], json!(["credentials.secret is forbidden"]));
    let tenants = t1.get("/tenants").await;
    assert_eq!(tenants.body["count"], 1);
    assert_eq!(d1["tenant_id"], "t1");
    // A token for a deleted tenant is stale.
    admin.call("DELETE", "/tenants/t1", None).await;
    assert_eq!(t1.get("/tenants/t1").await.status, 401);
}

#[tokio::test]
async fn events_and_attempts_pagination_and_filters() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    let rx = Receiver::start().await;
    api.tenant("t1").await;
    let d = api.webhook("t1", &rx.url("/p"), json!({})).await;
    for i in 0..10 {
        let r = api
            .publish(json!({"tenant_id": "t1", "topic": if i % 2 == 0 { "even" } else { "odd" }, "data": {"i": i}}))
            .await;
        assert_eq!(r.status, 202);
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    api.wait_attempts("limit=100", std::time::Duration::from_secs(10), |m| m.len() >= 10)
        .await;
    let mut pages = 0;
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let q = match &next {
            Some(c) => format!("/events?limit=3&next={c}"),
            None => "/events?limit=3".to_string(),
        };
        let r = api.get(&q).await;
        pages += 1;
        for e in r.body["models"].as_array().unwrap() {
            seen.push(e["data"]["i"].as_i64().unwrap());
        }
        next = r.body["pagination"]["next"].as_str().map(String::from);
        if next.is_none() {
            // The last page can go back.
            let prev = r.body["pagination"]["prev"].as_str().unwrap().to_string();
            let back = api.get(&format!("/events?limit=3&prev={prev}")).await;
            let b: Vec<i64> = back.body["models"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["data"]["i"].as_i64().unwrap())
                .collect();
            assert_eq!(b, vec![3, 2, 1]);
            break;
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, (0..10).rev().collect::<Vec<_>>(), "newest first");
    let r = api.get("/events?dir=asc&limit=2").await;
    assert_eq!(r.body["models"][0]["data"]["i"], 0);
    assert_eq!(r.body["pagination"]["dir"], "asc");
    let r = api.get("/events?topic=odd").await;
    assert_eq!(r.body["models"].as_array().unwrap().len(), 5);
    let r = api.get("/events?time[gte]=2999-01-01").await;
    assert_eq!(r.body["models"].as_array().unwrap().len(), 0);
    let r = api
        .get(&format!("/events?destination_id[]={}", d["id"].as_str().unwrap()))
        .await;
    assert_eq!(r.body["models"].as_array().unwrap().len(), 10);
    // Attempts with includes.
    let did = d["id"].as_str().unwrap();
    let r = api
        .get(&format!(
            "/tenants/t1/destinations/{did}/attempts?limit=2&include[]=event"
        ))
        .await;
    let m = r.body["models"].as_array().unwrap();
    assert_eq!(m.len(), 2);
    assert!(m[0]["event"]["id"].is_string() && m[0]["event"].get("data").is_none());
    let aid = m[0]["id"].as_str().unwrap();
    let r = api
        .get(&format!(
            "/tenants/t1/destinations/{did}/attempts/{aid}?include=event.data&include=destination"
        ))
        .await;
    assert!(r.body["event"]["data"].is_object(), "{}", r.text);
    assert_eq!(r.body["destination"]["id"], did);
    let r = api.get(&format!("/attempts/{aid}")).await;
    assert_eq!(r.body["id"], aid);
    assert!(r.body.get("response_data").is_none());
    let r = api.get("/attempts?status=failed").await;
    assert_eq!(r.body["models"].as_array().unwrap().len(), 0);
    let r = api.get("/attempts?status=success&limit=100").await;
    assert_eq!(r.body["models"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn destination_types_and_topics() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    let r = api.get("/destination-types").await;
    let types = r.body.as_array().unwrap();
    assert_eq!(types[0]["type"], "webhook");
    assert!(types[0]["config_fields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["key"] == "url" && f["required"] == true));
    assert_eq!(api.get("/destination-types/webhook").await.status, 200);
    let r = api.get("/destination-types/nope").await;
    assert_eq!((r.status, r.text.as_str()), (404, ""));
    assert_eq!(api.get("/topics").await.body, json!([]));
}

#[test]
fn invalid_configuration_is_refused_naming_the_key() {
    let (code, err) = Server::run_once(&[
        ("AES_ENCRYPTION_SECRET", "x"),
        ("API_KEY", "k"),
        ("RETRY_SCHEDULE", "1,zero"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("RETRY_SCHEDULE"), "{err}");
    let (code, err) = Server::run_once(&[("API_KEY", "k")]);
    assert_ne!(code, 0);
    assert!(err.contains("AES_ENCRYPTION_SECRET"), "{err}");
}

/// An Outpost setting for a feature we have not built stops the start,
/// naming the key and what to use instead (before, the server started and
/// kept every log on the node when CLICKHOUSE_ADDR was set).
#[test]
fn an_outpost_setting_for_an_unbuilt_feature_stops_the_start() {
    for (key, value, alternative) in [
        ("CLICKHOUSE_ADDR", "clickhouse:9000", "POSTGRES_URL"),
        (
            "AZURE_SERVICEBUS_CONNECTION_STRING",
            "Endpoint=sb://x.servicebus.windows.net/",
            "RABBITMQ_SERVER_URL",
        ),
        (
            "PUBLISH_AZURE_SERVICEBUS_CONNECTION_STRING",
            "Endpoint=sb://x.servicebus.windows.net/",
            "PUBLISH_RABBITMQ_SERVER_URL",
        ),
    ] {
        let (code, err) = Server::run_once(&[("AES_ENCRYPTION_SECRET", "x"), ("API_KEY", "k"), (key, value)]);
        assert_ne!(code, 0, "{key}");
        assert!(err.contains(key) && err.contains(alternative), "{err}");
    }
}

/// `DESTINATIONS_METADATA_PATH`: an operator's label, icon, setup link and
/// instructions replace a type's own in `/destination-types`, its fields and
/// validation do not change; an override file that cannot be read stops the
/// start, naming the file.
#[tokio::test]
async fn destination_type_metadata_can_be_overridden_from_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("overrides");
    std::fs::create_dir_all(d.join("rabbitmq")).unwrap();
    std::fs::write(
        d.join("rabbitmq/metadata.json"),
        r#"{"label":"Our bus","icon":"<svg id=\"ours\"/>","setup_link":{"href":"https://docs.example/bus","cta":"Read"},"config_fields":[]}"#,
    )
    .unwrap();
    std::fs::write(d.join("rabbitmq/instructions.md"), "# Ask ops for a vhost").unwrap();
    let path = d.to_string_lossy().to_string();
    let s = Server::start(&[("DESTINATIONS_METADATA_PATH", path.as_str())]).await;
    let api = Api::admin(&s);
    let r = api.get("/destination-types/rabbitmq").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["label"], "Our bus");
    assert_eq!(r.body["icon"], "<svg id=\"ours\"/>");
    assert_eq!(r.body["instructions"], "# Ask ops for a vhost");
    assert_eq!(r.body["setup_link"]["href"], "https://docs.example/bus");
    assert_eq!(r.body["type"], "rabbitmq");
    assert!(
        !r.body["config_fields"].as_array().unwrap().is_empty(),
        "fields are the type's own"
    );
    let all = api.get("/destination-types").await;
    let listed = all
        .body
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["type"] == "rabbitmq")
        .unwrap()
        .clone();
    assert_eq!(listed, r.body);
    let webhook = api.get("/destination-types/webhook").await;
    assert_eq!(webhook.body["label"], "Webhook", "other types keep their own");

    std::fs::write(d.join("rabbitmq/metadata.json"), "{\"label\": ").unwrap();
    let (code, err) = Server::run_once(&[
        ("AES_ENCRYPTION_SECRET", "x"),
        ("API_KEY", "k"),
        ("DESTINATIONS_METADATA_PATH", path.as_str()),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("DESTINATIONS_METADATA_PATH")
            && err.contains("rabbitmq/metadata.json")
            && err.contains("not valid JSON"),
        "{err}"
    );
}

/// Dev mode (no configuration at all: generated secrets, the SSRF guard off,
/// the key printed) is for one embedded node on a laptop: it refuses to start
/// when a back end is configured, and it listens on 127.0.0.1 only.
#[tokio::test]
async fn dev_mode_refuses_back_ends_and_listens_on_loopback_only() {
    for key in [
        "REDIS_HOST",
        "POSTGRES_URL",
        "RABBITMQ_SERVER_URL",
        "AWS_SQS_DELIVERY_QUEUE",
    ] {
        let (code, err) = Server::run_once(&[(key, "somewhere")]);
        assert_ne!(code, 0, "{key}: {err}");
        assert!(err.contains(key) && err.contains("API_JWT_SECRET"), "{key}: {err}");
        assert!(!err.contains("dev_"), "no key was generated and printed: {err}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outrider"))
        .current_dir(tmp.path())
        .env_clear()
        .env("API_PORT", port.to_string())
        .env("LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "dev mode did not listen on 127.0.0.1:{port}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Bound to 0.0.0.0 it would answer on every loopback address too.
    let other = tokio::net::TcpStream::connect(("127.0.0.2", port)).await;
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(other.is_err(), "dev mode answered on 127.0.0.2:{port}");
    assert!(err.contains("embedded dev mode") && err.contains("127.0.0.1"), "{err}");
    assert!(tmp.path().join("data/dev-credentials.env").exists());
}

/// Caller-chosen ids are bounded and printable, and event metadata cannot
/// become a header the request or its signature needs: each is a 422 naming
/// the field, before anything is stored.
#[tokio::test]
async fn ids_and_metadata_that_would_break_delivery_are_refused() {
    let s = Server::start(&[("DESTINATIONS_WEBHOOK_MODE", "standard")]).await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let long = "x".repeat(256);
    for (body, want) in [
        (
            json!({"id": "a\u{0}b", "tenant_id": "t1", "topic": "a", "data": {}}),
            "id must not contain control characters",
        ),
        (
            json!({"id": long, "tenant_id": "t1", "topic": "a", "data": {}}),
            "id must be at most 255 bytes",
        ),
        (
            json!({"tenant_id": "t\n1", "topic": "a", "data": {}}),
            "tenant_id must not contain control characters",
        ),
        (
            json!({"tenant_id": "t1", "topic": "a", "data": {}, "metadata": {"k": "a\u{0}"}}),
            "metadata.k must not contain control characters (keys) or NUL (values)",
        ),
    ] {
        let r = api.publish(body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {}", r.text);
        assert_eq!(r.body["data"], json!([want]), "{body}: {}", r.text);
    }
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "a", "data": {}, "metadata": {"source": "crm"}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);

    let r = api.call("PUT", "/tenants/t%01x", None).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["data"], json!(["tenant_id must not contain control characters"]));
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"id": "d".repeat(300), "type": "webhook", "topics": "*", "config": {"url": "https://example.com"}}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["data"], json!(["id must be at most 255 bytes"]));
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"type": "webhook", "topics": "*", "config": {"url": "https://example.com",
                "custom_headers": "{\"webhook-signature\":\"v1,x\"}"}}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(
        r.body["data"],
        json!(["config.custom_headers.webhook-signature is forbidden"])
    );
}

/// The reported crash: a tenant token saved a Kafka destination whose
/// partition key template was 200,000 `!` then `a`, and the API thread
/// overflowed its stack. Templates that would exhaust memory at delivery
/// are refused the same way, for every type that takes one.
#[tokio::test]
async fn templates_that_would_crash_or_exhaust_the_server_are_refused() {
    let s = Server::start(&[]).await;
    let admin = Api::admin(&s);
    admin.tenant("t1").await;
    let r = admin.get("/tenants/t1/token").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let api = Api::with_token(&s, r.body["token"].as_str().unwrap());
    let kafka = |template: &str| {
        json!({"type": "kafka", "topics": "*",
            "config": {"brokers": "kafka.example.com:9092", "topic": "orders", "sasl_mechanism": "plain",
                "partition_key_template": template},
            "credentials": {"username": "u", "password": "p"}})
    };
    let aws = |kind: &str, field: &str, template: &str| {
        let mut config = json!({"region": "us-east-1", "stream_name": "s", "bucket": "b"});
        config[field] = json!(template);
        json!({"type": kind, "topics": "*", "config": config,
            "credentials": {"key": "k", "secret": "s"}})
    };
    let reported = format!("{}a", "!".repeat(200_000));
    // Fifteen doublings: 2^15 times the event (forty are refused by nesting).
    let doubling = format!("data.list{}", " | [*].[@, @][]".repeat(15));
    let nested = format!("{}a", "!".repeat(1000));
    for (body, want) in [
        (
            kafka(&reported),
            "config.partition_key_template is invalid: longer than 1024 bytes",
        ),
        (
            kafka(&nested),
            "config.partition_key_template is invalid: nested deeper than 64 levels",
        ),
        (
            aws("aws_kinesis", "partition_key_template", &doubling),
            "config.partition_key_template is invalid: may build values more than 64 times the event's size",
        ),
        (
            aws("aws_s3", "key_template", &doubling),
            "config.key_template is invalid: may build values more than 64 times the event's size",
        ),
        (kafka("data.["), "config.partition_key_template is invalid"),
    ] {
        let r = api.post("/tenants/t1/destinations", body).await;
        assert_eq!(r.status, 422, "{}", r.text);
        assert!(
            r.body["data"].as_array().unwrap().iter().any(|m| m == want),
            "want {want:?} in {}",
            r.text
        );
    }
    // Still serving, and a template people write is saved.
    assert_eq!(admin.get("/healthz").await.status, 200);
    let r = api
        .post(
            "/tenants/t1/destinations",
            kafka("join('-', [metadata.topic, data.id])"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
}

/// Issue 31 item 5: metadata had no bound on its number or size of
/// entries, and each entry rides on every delivery and every stored event.
#[tokio::test]
async fn metadata_maps_are_bounded_in_entries_and_bytes() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let many: serde_json::Map<String, serde_json::Value> = (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let big = "v".repeat(4097);
    for (metadata, want) in [
        (json!(many.clone()), "metadata must have at most 64 entries"),
        (json!({"k": big}), "metadata.k must be at most 4096 bytes"),
    ] {
        let r = api
            .publish(json!({"tenant_id": "t1", "topic": "a", "data": {}, "metadata": metadata}))
            .await;
        assert_eq!(r.status, 422, "{}", r.text);
        assert_eq!(r.body["data"], json!([want]), "{}", r.text);
    }
    let at_limit: serde_json::Map<String, serde_json::Value> =
        (0..64).map(|i| (format!("k{i}"), json!("v".repeat(4096)))).collect();
    let r = api
        .publish(json!({"tenant_id": "t1", "topic": "a", "data": {}, "metadata": at_limit}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = api
        .post(
            "/tenants/t1/destinations",
            json!({"type": "webhook", "topics": "*", "config": {"url": "https://example.com"},
                "delivery_metadata": many}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(
        r.body["data"],
        json!(["delivery_metadata must have at most 64 entries"])
    );
    let d = api.webhook("t1", "https://example.com/h", json!({})).await;
    let r = api
        .patch(
            &format!("/tenants/t1/destinations/{}", d["id"].as_str().unwrap()),
            json!({"metadata": {"k": "v".repeat(5000)}}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.body["data"], json!(["metadata.k must be at most 4096 bytes"]));
}

/// A tenant token signed as the server signs them, with chosen claims.
fn signed_token(claims: Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Every route of the API against every way a caller can be wrong about who
/// it is: no token, a wrong secret, an expired token, `alg: none`, a token
/// of another deployment that shares the secret, a token issued before its
/// tenant was deleted and created again, and another tenant's token.
#[tokio::test]
async fn the_auth_matrix_holds_on_every_route() {
    use base64::Engine as _;
    let s = Server::start(&[("RETRY_SCHEDULE", "1")]).await;
    let admin = Api::admin(&s);
    for t in ["t1", "t2", "t3"] {
        admin.tenant(t).await;
    }
    let now = chrono::Utc::now().timestamp();
    let claims = |sub: &str| json!({"iss": "outpost", "sub": sub, "iat": now, "exp": now + 3600});
    // The token t3 had before it was deleted and created again.
    let old_t3 = signed_token(claims("t3"), JWT_SECRET);
    assert_eq!(Api::with_token(&s, &old_t3).get("/tenants/t3").await.status, 200);
    assert_eq!(admin.raw("DELETE", "/tenants/t3", "").await.status, 200);
    // `iat` has whole seconds: wait for the next one before re-creating.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    admin.tenant("t3").await;
    let alg_none = {
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(claims("t1")))
    };
    let mut other_deployment = claims("t1");
    other_deployment["deployment_id"] = json!("another");
    let mut expired = claims("t1");
    expired["iat"] = json!(now - 7200);
    expired["exp"] = json!(now - 60);
    let refused: Vec<(&str, String)> = vec![
        ("no token", String::new()),
        ("the wrong admin key", "not-the-key".into()),
        ("a wrong secret", signed_token(claims("t1"), "another-secret")),
        ("an expired token", signed_token(expired, JWT_SECRET)),
        ("alg none", alg_none),
        ("another deployment's token", signed_token(other_deployment, JWT_SECRET)),
        ("a token from before the tenant was re-created", old_t3.clone()),
    ];
    let routes: &[(&str, &str)] = &[
        ("GET", "/topics"),
        ("GET", "/destination-types"),
        ("GET", "/destination-types/webhook"),
        ("POST", "/publish"),
        ("POST", "/retry"),
        ("GET", "/tenants"),
        ("PUT", "/tenants/t1"),
        ("GET", "/tenants/t1"),
        ("DELETE", "/tenants/t1"),
        ("GET", "/tenants/t1/token"),
        ("GET", "/tenants/t1/portal"),
        ("GET", "/tenants/t1/destinations"),
        ("POST", "/tenants/t1/destinations"),
        ("GET", "/tenants/t1/destinations/d1"),
        ("PATCH", "/tenants/t1/destinations/d1"),
        ("DELETE", "/tenants/t1/destinations/d1"),
        ("PUT", "/tenants/t1/destinations/d1/enable"),
        ("PUT", "/tenants/t1/destinations/d1/disable"),
        ("GET", "/tenants/t1/destinations/d1/attempts"),
        ("GET", "/tenants/t1/destinations/d1/attempts/a1"),
        ("GET", "/events"),
        ("GET", "/events/e1"),
        ("GET", "/attempts"),
        ("GET", "/attempts/a1"),
    ];
    let mut cells = 0;
    for (method, path) in routes {
        for (who, token) in &refused {
            let r = Api::with_token(&s, token).raw(method, path, "{}").await;
            assert_eq!(r.status, 401, "{method} {path} with {who}: {}", r.text);
            cells += 1;
        }
        // Another tenant's valid token never reaches t1's resources.
        if path.starts_with("/tenants/t1") {
            let t2 = signed_token(claims("t2"), JWT_SECRET);
            let r = Api::with_token(&s, &t2).raw(method, path, "{}").await;
            assert!(
                r.status == 403 || r.status == 401,
                "{method} {path} with t2's token: {} {}",
                r.status,
                r.text
            );
            cells += 1;
        }
    }
    // The same claims, rightly signed and issued now, are accepted: the
    // refusals above are about the one thing each case changes.
    let fresh_t3 = signed_token(
        json!({"iss": "outpost", "sub": "t3", "iat": chrono::Utc::now().timestamp(),
        "exp": now + 3600}),
        JWT_SECRET,
    );
    assert_eq!(Api::with_token(&s, &fresh_t3).get("/tenants/t3").await.status, 200);
    assert_eq!(
        Api::with_token(&s, &signed_token(claims("t1"), JWT_SECRET))
            .get("/tenants/t1")
            .await
            .status,
        200
    );
    assert!(Api::with_token(&s, "").get("/healthz").await.status == 200);
    println!("auth matrix: {} routes, {cells} cells", routes.len());
    assert_eq!(cells, routes.len() * refused.len() + 14);
}

/// Outpost's metrics API over real deliveries: events and attempts by
/// dimension and time bucket, a tenant token seeing only its own tenant,
/// and Outpost's 400s and 403s.
#[tokio::test]
async fn metrics_count_deliveries_by_dimension_and_bucket() {
    let s = Server::start(&[]).await;
    let admin = Api::admin(&s);
    admin.tenant("t1").await;
    admin.tenant("t2").await;
    let rx = Receiver::start().await;
    let d1 = admin.webhook("t1", &rx.url("/1"), json!({})).await;
    admin.webhook("t2", &rx.url("/2"), json!({})).await;
    let before = outrider_engine_time_now();
    for (tenant, topic) in [("t1", "a"), ("t1", "a"), ("t1", "b"), ("t2", "a"), ("t2", "b")] {
        let r = admin
            .publish(json!({"tenant_id": tenant, "topic": topic, "data": {}}))
            .await;
        assert_eq!(r.status, 202, "{}", r.text);
    }
    admin
        .wait_attempts("", std::time::Duration::from_secs(10), |m| m.len() >= 5)
        .await;
    let range = format!(
        "time[start]={}&time[end]={}",
        fmt_ms(before - 120_000),
        fmt_ms(before + 120_000)
    );
    let r = admin
        .get(&format!(
            "/metrics/events?{range}&measures[]=count&dimensions[]=tenant_id"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let by_tenant: Vec<(String, i64)> = r.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["dimensions"]["tenant_id"].as_str().unwrap().to_string(),
                d["metrics"]["count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(by_tenant, vec![("t1".to_string(), 3), ("t2".to_string(), 2)]);
    assert_eq!(r.body["metadata"]["row_count"], 2);
    assert_eq!(r.body["metadata"]["row_limit"], 100000);
    assert_eq!(r.body["metadata"]["truncated"], false);
    assert!(r.body["data"][0].get("time_bucket").is_none());

    // Minute buckets, zero-filled, by destination.
    let r = admin
        .get(&format!(
            "/metrics/attempts?{range}&granularity=1m&measures=count&measures=successful_count&measures=error_rate\
             &dimensions=destination_id&filters[tenant_id]=t1"
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let data = r.body["data"].as_array().unwrap();
    let (first, end) = ((before - 120_000) / 60_000 * 60_000, before + 120_000);
    let buckets = ((end - first + 59_999) / 60_000) as usize;
    assert_eq!(
        data.len(),
        buckets,
        "every minute bucket, for one destination: {data:?}"
    );
    let total: i64 = data.iter().map(|d| d["metrics"]["count"].as_i64().unwrap()).sum();
    let ok: i64 = data
        .iter()
        .map(|d| d["metrics"]["successful_count"].as_i64().unwrap())
        .sum();
    assert_eq!((total, ok), (3, 3));
    assert!(data.iter().all(|d| d["dimensions"]["destination_id"] == d1["id"]));
    assert_eq!(r.body["metadata"]["granularity"], "1m");

    // A tenant token sees its own tenant only.
    let token = admin.get("/tenants/t2/token").await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let t2 = Api::with_token(&s, &token);
    let r = t2.get(&format!("/metrics/events?{range}&measures=count")).await;
    assert_eq!(
        (r.status, r.body["data"][0]["metrics"]["count"].clone()),
        (200, json!(2)),
        "{}",
        r.text
    );
    let r = t2
        .get(&format!("/metrics/events?{range}&measures=count&dimensions=tenant_id"))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    let r = t2
        .get(&format!(
            "/metrics/attempts?{range}&measures=count&filters[tenant_id]=t1"
        ))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);

    // Outpost's 400s.
    for (query, message) in [
        ("measures=count".to_string(), "time[start] and time[end] are required"),
        (
            format!("time[start]={0}&time[end]={0}&measures=count", fmt_ms(before)),
            "invalid time range: start must be before end",
        ),
        (format!("{range}&measures=bogus"), "unknown measure \"bogus\""),
        (
            format!("{range}&measures=count&granularity=25h"),
            "invalid granularity \"25h\": h takes 1 to 24",
        ),
        (
            format!(
                "time[start]={}&time[end]={}&measures=count&granularity=1s",
                fmt_ms(before),
                fmt_ms(before + 3 * 86_400_000)
            ),
            "query too broad: try fewer dimensions, more filters, or a shorter time range",
        ),
    ] {
        let r = admin.get(&format!("/metrics/attempts?{query}")).await;
        assert_eq!(
            (r.status, r.body["message"].as_str()),
            (400, Some(message)),
            "{query}: {}",
            r.text
        );
    }
}

fn outrider_engine_time_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Milliseconds as RFC 3339, URL-safe (no `+`).
fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// `GET /metrics` (Prometheus text): attempts by shard and outcome, the
/// attempt and publish histograms, bounded labels (no tenant or
/// destination id), and public like `/healthz`.
#[tokio::test]
async fn prometheus_metrics_count_what_the_node_did() {
    let s = Server::start(&[("DELIVERY_SHARDS", "2")]).await;
    let admin = Api::admin(&s);
    admin.tenant("t-prom").await;
    let rx = Receiver::start().await;
    admin.webhook("t-prom", &rx.url("/ok"), json!({"id": "d-prom"})).await;
    for i in 0..6 {
        let r = admin
            .publish(json!({"tenant_id": "t-prom", "topic": "x", "data": {"i": i}}))
            .await;
        assert_eq!(r.status, 202);
    }
    rx.wait_for(6, std::time::Duration::from_secs(10)).await;
    admin
        .wait_attempts("", std::time::Duration::from_secs(10), |m| m.len() >= 6)
        .await;
    let text = s.metrics_text().await;
    println!("{text}");
    let value = |prefix: &str| metric_sum(&text, prefix);
    assert_eq!(value("outrider_delivery_attempts_total{shard=\""), 6.0, "{text}");
    assert_eq!(value("outrider_attempt_duration_seconds_count{"), 6.0, "{text}");
    assert_eq!(value("outrider_publish_duration_seconds_count"), 6.0, "{text}");
    assert_eq!(value("outrider_shard_up{"), 2.0, "{text}");
    assert!(
        text.contains("outrider_attempt_duration_seconds_bucket{le=\"+Inf\",shard=\"") || text.contains("le=\"+Inf\"")
    );
    assert!(
        !text.contains("t-prom") && !text.contains("d-prom"),
        "no tenant or destination id: {text}"
    );
    // Nothing is left in flight, waiting or queued once all six settled; the
    // journals committed at least once per publish batch.
    for idle in [
        "outrider_deliveries_in_flight{",
        "outrider_deliveries_scheduled{",
        "outrider_deliveries_queued{",
    ] {
        assert_eq!(value(idle), 0.0, "{idle}: {text}");
    }
    assert!(value("outrider_journal_commits_total{") >= 1.0, "{text}");
    assert!(value("outrider_journal_commit_requests_total{") >= 6.0, "{text}");
    assert!(
        value("outrider_journal_commit_duration_seconds_count{") >= 1.0,
        "{text}"
    );
    assert!(
        value("outrider_store_commit_records_total") >= 12.0,
        "six events, six attempts: {text}"
    );
    assert!(value("outrider_store_commit_duration_seconds_count") >= 1.0, "{text}");
    assert_eq!(
        value("outrider_alerts_total{kind=\"consecutive_failure\"}"),
        0.0,
        "{text}"
    );
    assert_eq!(value("outrider_destinations_auto_disabled_total"), 0.0, "{text}");
}

/// `METRICS_PORT` moves `/metrics` to its own listener: the API port stops
/// answering it.
#[tokio::test]
async fn metrics_port_serves_metrics_alone() {
    let mport = free_port();
    let s = Server::start(&[("METRICS_PORT", &mport.to_string())]).await;
    let r = reqwest::get(format!("http://127.0.0.1:{mport}/metrics")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("outrider_shard_up"));
    let r = reqwest::get(format!("http://127.0.0.1:{mport}/api/v1/tenants"))
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the metrics port serves nothing else");
    let r = reqwest::get(format!("http://127.0.0.1:{}/metrics", s.port))
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (code, err) = Server::run_once(&[("METRICS_PORT", "3333"), ("API_PORT", "3333")]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("METRICS_PORT") && err.contains("must differ from API_PORT"),
        "{err}"
    );
}

/// `LOG_RETENTION_DAYS` on the embedded store: at start, events older than
/// the retention (by their time) go, once outside the idempotency window;
/// newer ones stay. With `LOG_FORMAT=json` every log line is one JSON object.
#[tokio::test]
async fn log_retention_deletes_old_events_and_json_logs_are_json() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let mut s = Server::start_logged(
        &[
            ("PUBLISH_IDEMPOTENCY_KEY_TTL", "1"),
            ("LOG_FORMAT", "json"),
            ("LOG_LEVEL", "info"),
        ],
        Some(log.clone()),
    )
    .await;
    let admin = Api::admin(&s);
    admin.tenant("t-ret").await;
    let rx = Receiver::start().await;
    admin.webhook("t-ret", &rx.url("/ok"), json!({"id": "d-ret"})).await;
    let old = (chrono::Utc::now() - chrono::Duration::days(10)).to_rfc3339();
    let r = admin
        .publish(json!({"id": "ev-old", "tenant_id": "t-ret", "topic": "x", "time": old, "data": {}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = admin
        .publish(json!({"id": "ev-new", "tenant_id": "t-ret", "topic": "x", "data": {}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    rx.wait_for(2, Duration::from_secs(10)).await;
    let events = |r: crate::common::Resp| -> Vec<String> {
        r.body["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while events(admin.get("/events?tenant_id=t-ret").await).len() < 2 {
        assert!(Instant::now() < deadline, "both events indexed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.terminate(Duration::from_secs(20)).await;
    // Past the one-second idempotency window.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    s.set_env("LOG_RETENTION_DAYS", "3");
    s.spawn().await;
    let admin = Api::admin(&s);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ids = events(admin.get("/events?tenant_id=t-ret").await);
        if ids == ["ev-new"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 10-day-old event was not deleted: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = s.metrics_text().await;
    assert!(text.contains("outrider_log_retention_runs_total 1"), "{text}");
    assert!(text.contains("outrider_log_retention_rows_deleted_total 1"), "{text}");
    s.terminate(Duration::from_secs(20)).await;
    let lines = std::fs::read_to_string(&log).unwrap();
    let mut ran = None;
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{line}");
        if v["message"] == "log retention ran" {
            ran = Some(v);
        }
    }
    let ran = ran.unwrap_or_else(|| panic!("no 'log retention ran' line in:\n{lines}"));
    assert_eq!(
        (ran["days"].as_u64(), ran["events"].as_u64()),
        (Some(3), Some(1)),
        "{ran}"
    );
}
