//! The tenant portal's server side: the page and its assets, the URL
//! `GET /tenants/{id}/portal` hands out, the `PORTAL_*` settings, and the
//! "send test event" route. The page itself is driven in a real browser by
//! `tests/portal/portal.mjs`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

async fn get(url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    // No automatic decompression: the test checks what is on the wire.
    let client = reqwest::Client::builder().build().unwrap();
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn the_portal_page_and_its_assets_are_served() {
    let s = Server::start(&[
        ("PORTAL_ORGANIZATION_NAME", "Acme <Payments>"),
        ("PORTAL_BRAND_COLOR", "#0f766e"),
        ("PORTAL_FORCE_THEME", "dark"),
        ("PORTAL_REFERER_URL", "https://app.example.com/settings"),
        ("TOPICS", "user.created,order.paid"),
    ])
    .await;
    let origin = format!("http://127.0.0.1:{}", s.port);
    let r = get(&format!("{origin}/"), &[]).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["referrer-policy"], "no-referrer");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    assert!(
        html.contains(r#"data-theme="dark""#),
        "forced theme rendered server-side"
    );
    assert!(
        html.contains("<title>Acme &lt;Payments&gt; · Event destinations</title>"),
        "{html}"
    );
    // The settings the page reads, with `<` escaped inside the data block.
    let start = html.find(r#"id="portal-settings">"#).unwrap() + r#"id="portal-settings">"#.len();
    let end = start + html[start..].find("</script>").unwrap();
    let settings: Value = serde_json::from_str(&html[start..end]).unwrap();
    assert_eq!(settings["ORGANIZATION_NAME"], "Acme <Payments>");
    assert_eq!(settings["BRAND_COLOR"], "#0f766e");
    assert_eq!(settings["REFERER_URL"], "https://app.example.com/settings");
    assert_eq!(settings["TOPICS"], json!(["user.created", "order.paid"]));
    assert_eq!(settings["SIGNATURE"]["header"], "x-outpost-signature");
    assert_eq!(settings["ENABLE_DESTINATION_FILTER"], false);
    assert!(!html[start..end].contains('<'));

    // Versioned assets, compressed when asked, cached for good, 304 on a match.
    let js_path = html
        .split("src=\"")
        .find_map(|p| p.strip_prefix("/portal/app.js"))
        .and_then(|p| p.split('"').next())
        .unwrap()
        .to_string();
    let r = get(
        &format!("{origin}/portal/app.js{js_path}"),
        &[("accept-encoding", "gzip, br")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["content-type"], "text/javascript; charset=utf-8");
    assert!(r.headers()["cache-control"].to_str().unwrap().contains("immutable"));
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    let gz = r.bytes().await.unwrap().len();
    let r = get(&format!("{origin}/portal/app.js"), &[]).await;
    assert!(r.headers().get("content-encoding").is_none());
    let plain = r.bytes().await.unwrap().len();
    assert!(gz * 2 < plain, "gzip {gz} B vs {plain} B");
    let r = get(&format!("{origin}/portal/app.js"), &[("if-none-match", &etag)]).await;
    assert_eq!(r.status(), 304);
    let r = get(&format!("{origin}/portal/app.css"), &[]).await;
    assert_eq!(r.headers()["content-type"], "text/css; charset=utf-8");
    // Outpost's runtime-config script, for a page built against Outpost's.
    let r = get(&format!("{origin}/inject-portal-config.js"), &[]).await;
    assert_eq!(r.headers()["cache-control"], "no-store");
    let body = r.text().await.unwrap();
    assert!(body.starts_with("window.PORTAL_CONFIGS = {"), "{body}");
    // Unknown paths stay JSON 404s.
    let r = get(&format!("{origin}/portal/nope.js"), &[]).await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn the_portal_url_works_from_the_host_the_client_used() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    let url = format!("{}/tenants/t1/portal", s.base());
    let call = |headers: Vec<(&'static str, String)>, query: &'static str| {
        let url = format!("{url}{query}");
        async move {
            let mut req = reqwest::Client::new().get(url).bearer_auth(API_KEY);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()["redirect_url"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let plain = call(vec![], "").await;
    let prefix = format!("http://127.0.0.1:{}?token=", s.port);
    assert!(plain.starts_with(&prefix), "{plain}");
    // The token in it works against the API, for this tenant only.
    let token = plain.strip_prefix(&prefix).unwrap();
    let t = Api::with_token(&s, token);
    assert_eq!(t.get("/tenants/t1").await.status, 200);
    assert_eq!(t.get("/tenants/t2/destinations").await.status, 403);
    // Followed as given, it opens the page.
    let r = reqwest::get(&plain).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("portal-settings"));

    let themed = call(vec![("host", "portal.example.com:8443".into())], "?theme=dark").await;
    assert!(themed.starts_with("http://portal.example.com:8443?token="), "{themed}");
    assert!(themed.ends_with("&theme=dark"), "{themed}");
    let other = call(vec![], "?theme=blue").await;
    assert!(!other.contains("theme="), "only light or dark pass: {other}");
    let tls = call(vec![("x-forwarded-proto", "https".into())], "").await;
    assert!(tls.starts_with("https://"), "{tls}");
    let odd = call(vec![("host", "evil.example/path?x=".into())], "").await;
    assert!(odd.starts_with(&format!("http://localhost:{}?token=", s.port)), "{odd}");

    let mut s2 = Server::start(&[("PORTAL_PROXY_URL", "https://hooks.example.com/portal")]).await;
    Api::admin(&s2).tenant("t1").await;
    let r = Api::admin(&s2).get("/tenants/t1/portal?theme=light").await;
    let u = r.body["redirect_url"].as_str().unwrap();
    assert!(u.starts_with("https://hooks.example.com/portal?token="), "{u}");
    assert!(u.ends_with("&theme=light"), "{u}");
    s2.terminate(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn bad_portal_settings_stop_the_start_naming_the_key() {
    for (k, v) in [
        ("PORTAL_BRAND_COLOR", "purple"),
        ("PORTAL_FORCE_THEME", "sepia"),
        ("PORTAL_LOGO", "javascript:alert(1)"),
        ("PORTAL_PROXY_URL", "/portal"),
    ] {
        let (code, out) = Server::run_once(&[(k, v)]);
        assert_ne!(code, 0, "{k}={v} started");
        assert!(out.contains(k), "{k}: {out}");
    }
}

#[tokio::test]
async fn a_test_event_reaches_only_that_destination() {
    let s = Server::start(&[("TOPICS", "user.created,order.paid")]).await;
    let rx = Receiver::start().await;
    let api = Api::admin(&s);
    api.tenant("t1").await;
    api.tenant("t2").await;
    let d = api
        .webhook("t1", &rx.url("/one"), json!({"topics": ["order.paid"]}))
        .await;
    let _sibling = api.webhook("t1", &rx.url("/two"), json!({})).await;
    let id = d["id"].as_str().unwrap();
    let token = api.get("/tenants/t1/token").await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let t1 = Api::with_token(&s, &token);
    let path = format!("/tenants/t1/destinations/{id}/test");

    // Defaults: the destination's first topic and a small test object.
    let r = t1.post(&path, json!({})).await;
    assert_eq!(r.status, 202, "{}", r.text);
    assert_eq!(r.body["topic"], "order.paid");
    assert_eq!(r.body["destination_ids"], json!([id]));
    let got = rx.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/one", "only the chosen destination");
    let body: Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["test"], true);
    // It is an ordinary event: in the log with its attempt.
    let event_id = r.body["id"].as_str().unwrap().to_string();
    let attempts = t1
        .wait_attempts(&format!("event_id={event_id}"), Duration::from_secs(10), |a| {
            !a.is_empty()
        })
        .await;
    assert_eq!(attempts[0]["destination_id"], id);

    // Chosen data; a topic the destination does not take is refused.
    let r = t1
        .post(&path, json!({"topic": "order.paid", "data": {"amount": 5}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let r = t1.post(&path, json!({"topic": "user.created"})).await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert!(r.text.contains("does not reach this destination"), "{}", r.text);
    let r = t1.post(&path, json!({"topic": "nope"})).await;
    assert_eq!((r.status, r.body["data"].clone()), (422, json!(["topic is invalid"])));
    let r = t1.post(&path, json!({"data": [1]})).await;
    assert_eq!(r.status, 422);
    let r = t1.raw("POST", &path, "{").await;
    assert_eq!(r.status, 422);

    // Another tenant's token cannot use it; a disabled destination refuses.
    let t2_token = api.get("/tenants/t2/token").await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = Api::with_token(&s, &t2_token).post(&path, json!({})).await;
    assert_eq!(r.status, 403);
    let r = t1.post("/tenants/t1/destinations/des_missing/test", json!({})).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        t1.put(&format!("/tenants/t1/destinations/{id}/disable")).await.status,
        200
    );
    let r = t1.post(&path, json!({})).await;
    assert_eq!(r.status, 422);
    assert!(r.text.contains("disabled"), "{}", r.text);
    rx.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(rx.count(), 2, "the refused ones sent nothing");
}
