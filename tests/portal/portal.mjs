// Drives the tenant portal in a real browser (Debian's headless Chromium
// through puppeteer-core) against a real Outrider server this script starts,
// with a real local webhook receiver. Each test prints its name and result;
// each main page is saved as a screenshot; the first load is measured
// (bytes on the wire for the page and its assets, and the time from
// navigation to a rendered destination list).
//
// Usage: OUTRIDER_BIN=/path/to/outrider [CHROMIUM=/usr/bin/chromium]
//        [PORTAL_SCREENSHOTS=dir] node portal.mjs
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createTcpServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import puppeteer from "puppeteer-core";

const bin = process.env.OUTRIDER_BIN;
if (!bin) {
  console.error("OUTRIDER_BIN must point at the outrider binary");
  process.exit(2);
}
const chromium = process.env.CHROMIUM || "/usr/bin/chromium";
const shots = resolve(process.env.PORTAL_SCREENSHOTS || join(tmpdir(), "outrider-portal-screenshots"));
mkdirSync(shots, { recursive: true });

const freePort = () =>
  new Promise((res, rej) => {
    const probe = createTcpServer();
    probe.once("error", rej);
    probe.listen(0, "127.0.0.1", () => {
      const p = probe.address().port;
      probe.close(() => res(p));
    });
  });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const apiKey = "portal-admin-key";
const jwtSecret = "portal-jwt-secret";
const port = await freePort();
const dir = mkdtempSync(join(tmpdir(), "outrider-portal-"));

// The receiver: answers 200 "ok", or 500 when the event data says fail.
const received = [];
const receiver = createServer((req, res) => {
  let body = "";
  req.on("data", (c) => (body += c));
  req.on("end", () => {
    if (req.url.startsWith("/referer")) {
      res.writeHead(200, { "content-type": "text/html" });
      res.end("<h1>operator app</h1>");
      return;
    }
    received.push({ headers: req.headers, body });
    const fail = body.includes('"fail":true');
    res.writeHead(fail ? 500 : 200, { "content-type": "text/plain" });
    res.end(fail ? "boom" : "ok");
  });
});
await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
const recvBase = `http://127.0.0.1:${receiver.address().port}`;

const server = spawn(bin, [], {
  cwd: dir,
  env: {
    PATH: process.env.PATH,
    API_PORT: String(port),
    API_KEY: apiKey,
    API_JWT_SECRET: jwtSecret,
    AES_ENCRYPTION_SECRET: "portal-aes-secret",
    OUTRIDER_DATA_DIR: join(dir, "data"),
    OUTRIDER_ALLOW_PRIVATE_DESTINATIONS: "true",
    TOPICS: "user.created,user.deleted,order.paid",
    RETRY_SCHEDULE: "60",
    LOG_LEVEL: "warn",
    DELIVERY_SHARDS: "2",
    PORTAL_ORGANIZATION_NAME: "Acme Test",
    PORTAL_BRAND_COLOR: "#0f766e",
    PORTAL_REFERER_URL: `${recvBase}/referer`,
    PORTAL_ENABLE_DESTINATION_FILTER: "true",
    PORTAL_ENABLE_WEBHOOK_CUSTOM_HEADERS: "true",
  },
  stdio: ["ignore", "inherit", "inherit"],
});
const origin = `http://127.0.0.1:${port}`;

async function admin(method, path, body) {
  const r = await fetch(`${origin}/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function waitFor(what, fn, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

const results = [];
async function test(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push([name, "passed"]);
    console.log(`ok    ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push([name, "FAILED"]);
    console.log(`FAIL  ${name}: ${e.stack || e}`);
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

let browser;
try {
  await waitFor("server health", async () => (await fetch(`${origin}/healthz`).catch(() => null))?.ok, 20000);
  await admin("PUT", "/tenants/t1");
  await admin("PUT", "/tenants/t2");
  const other = await admin("POST", "/tenants/t2/destinations", {
    type: "webhook",
    topics: ["*"],
    config: { url: `${recvBase}/tenant-two-private-endpoint` },
  });
  const portalUrl = async (theme) => (await admin("GET", `/tenants/t1/portal${theme ? `?theme=${theme}` : ""}`)).redirect_url;

  browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 860 });
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  const shot = (name, p = page) => p.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  let destId;

  await test("portal_url_works_as_given", async () => {
    const url = await portalUrl();
    assert(url.startsWith(`${origin}?token=`), `redirect_url ${url}`);
    await page.goto(url, { waitUntil: "domcontentloaded" });
    await page.waitForSelector("[data-page=list]");
    assert(!page.url().includes("token="), `token left in the address bar: ${page.url()}`);
    const brand = await page.$eval("#brand", (e) => e.textContent);
    assert(brand.includes("Acme Test"), `brand ${brand}`);
    const color = await page.evaluate(() => getComputedStyle(document.documentElement).getPropertyValue("--brand").trim());
    assert(color === "#0f766e", `brand colour ${color}`);
    const footer = await page.$eval("footer", (e) => e.textContent);
    assert(footer.includes("Powered by Outrider"), `footer ${footer}`);
  });

  await test("wizard_creates_a_webhook_destination", async () => {
    await page.click("a[href='#/new']");
    await page.waitForSelector("[data-type=webhook]");
    const kinds = await page.$$eval("[data-type]", (els) => els.map((e) => e.dataset.type));
    assert(kinds.length === 13, `types in the wizard: ${kinds.join(",")}`);
    await shot("wizard-type");
    await page.click("[data-type=webhook]");
    await page.waitForSelector("input[data-topic='user.created']");
    await page.click("#topic-all"); // off: pick topics one by one
    await page.click("input[data-topic='user.created']");
    await page.click("input[data-topic='order.paid']");
    await page.click("button[type=submit]");
    await page.waitForSelector("#config-form");
    // A bad URL first: the API's validation error is shown on the field.
    await page.type("#f-config-url", "not a url");
    await page.click("#config-form button[type=submit]");
    await page.waitForSelector("#config-form .errors");
    const err = await page.$eval("#config-form .errors", (e) => e.textContent);
    assert(/config\.url/i.test(err), `error shown: ${err}`);
    assert(await page.$("[data-key='config.url'].invalid"), "url field marked invalid");
    await shot("wizard-config-error");
    await page.$eval("#f-config-url", (e) => (e.value = ""));
    await page.type("#f-config-url", `${recvBase}/hook`);
    await page.click("[data-key='config.custom_headers'] button");
    await page.type("[data-key='config.custom_headers'] .kv input:nth-child(1)", "x-team");
    await page.type("[data-key='config.custom_headers'] .kv input:nth-child(2)", "payments");
    await page.click("#config-form button[type=submit]");
    await page.waitForSelector("#actions");
    destId = decodeURIComponent(page.url().split("#/d/")[1].split("/")[0]);
    const d = await admin("GET", `/tenants/t1/destinations/${destId}`);
    assert(d.config.url === `${recvBase}/hook`, `url ${d.config.url}`);
    assert(JSON.stringify(d.topics) === JSON.stringify(["order.paid", "user.created"]) || d.topics.length === 2, `topics ${d.topics}`);
    assert(JSON.parse(d.config.custom_headers)["x-team"] === "payments", `headers ${d.config.custom_headers}`);
  });

  await test("published_event_appears_live_in_the_delivery_log", async () => {
    await page.goto(`${origin}/#/d/${encodeURIComponent(destId)}/log`, { waitUntil: "domcontentloaded" });
    await page.waitForSelector("#log-filters");
    // Published after the log is open: it must show up without a reload.
    await admin("POST", "/publish", { tenant_id: "t1", topic: "user.created", data: { n: 1 } });
    await admin("POST", "/publish", { tenant_id: "t1", topic: "order.paid", data: { n: 2, fail: true } });
    await page.waitForFunction(() => document.querySelectorAll("#attempts tbody tr").length >= 2, { timeout: 15000 });
    const text = await page.$eval("#attempts", (e) => e.textContent);
    assert(text.includes("Success · 200") && text.includes("Failed · 500"), `log ${text}`);
    assert(received.some((r) => r.headers["x-team"] === "payments"), "custom header delivered");
    await shot("delivery-log");
    // The status filter narrows the list.
    await page.select("#log-status", "failed");
    await page.waitForFunction(() => document.querySelectorAll("#attempts tbody tr").length === 1, { timeout: 5000 });
    await page.select("#log-status", "");
    await page.waitForFunction(() => document.querySelectorAll("#attempts tbody tr").length >= 2, { timeout: 5000 });
  });

  await test("attempt_detail_shows_request_and_response_and_retries", async () => {
    const failedRow = await page.$$eval("#attempts tbody tr", (rows) => rows.find((r) => r.textContent.includes("Failed"))?.dataset.id);
    await page.goto(`${origin}/#/d/${encodeURIComponent(destId)}/log/${encodeURIComponent(failedRow)}`, { waitUntil: "domcontentloaded" });
    await page.waitForSelector("#attempt");
    const data = await page.$eval("#event-data", (e) => e.textContent);
    assert(data.includes('"n": 2'), `request data ${data}`);
    const body = await page.$eval("#response-body", (e) => e.textContent);
    assert(body.includes("boom"), `response body ${body}`);
    await shot("attempt-detail");
    const before = received.length;
    await page.click("#retry");
    await waitFor("the manual retry to reach the receiver", () => received.length > before);
    await page.goto(`${origin}/#/d/${encodeURIComponent(destId)}/log`, { waitUntil: "domcontentloaded" });
    await page.waitForFunction(() => document.querySelectorAll("#attempts tbody tr").length >= 3, { timeout: 15000 });
    const text = await page.$eval("#attempts", (e) => e.textContent);
    assert(text.includes("(manual)"), `manual retry in the log: ${text}`);
  });

  await test("send_test_event_is_delivered_and_logged", async () => {
    await page.goto(`${origin}/#/d/${encodeURIComponent(destId)}/overview`, { waitUntil: "domcontentloaded" });
    // The overview itself, not the log page's buttons before it.
    await page.waitForSelector("#charts svg");
    await page.select("#test-topic", "order.paid");
    const before = received.length;
    await page.click("#send-test");
    const got = await waitFor("the test event at the receiver", () => received.slice(before).find((r) => r.body.includes('"test":true')));
    assert(got.headers["x-outpost-topic"] === "order.paid", `topic header ${got.headers["x-outpost-topic"]}`);
    // The snippet recomputes the signature the receiver got.
    const snippet = await page.$eval("#snippet", (e) => e.textContent);
    assert(snippet.includes("x-outpost-signature") && snippet.includes("createHmac"), "node snippet");
    const d = await admin("GET", `/tenants/t1/destinations/${destId}`);
    const sig = createHmac("sha256", d.credentials.secret).update(got.body).digest("hex");
    assert(got.headers["x-outpost-signature"].includes(sig), "signature as the snippet computes it");
  });

  await test("detail_shows_charts_from_the_metrics_api", async () => {
    await page.goto(`${origin}/#/d/${encodeURIComponent(destId)}/overview`, { waitUntil: "domcontentloaded" });
    await page.waitForFunction(() => document.querySelectorAll("#charts svg rect").length > 0, { timeout: 10000 });
    const rate = await page.$eval("#error-rate", (e) => e.textContent);
    assert(/%/.test(rate), `error rate ${rate}`);
    const captions = await page.$$eval("#charts figcaption", (els) => els.map((e) => e.textContent));
    assert(captions.some((c) => /successful, [1-9]\d* failed/.test(c)), `captions ${captions}`);
    await shot("detail-charts");
    await page.goto(`${origin}/#/d/${encodeURIComponent(destId)}/settings`, { waitUntil: "domcontentloaded" });
    await page.waitForSelector("#settings-form");
    assert(await page.$("#filter"), "filter editor shown (PORTAL_ENABLE_DESTINATION_FILTER)");
    await shot("detail-settings");
  });

  await test("disable_destination", async () => {
    await page.goto(`${origin}/#/d/${encodeURIComponent(destId)}/overview`, { waitUntil: "domcontentloaded" });
    // The overview's own buttons (the settings page before it had a #toggle too).
    await page.waitForSelector("#charts svg");
    await page.click("#toggle");
    await page.waitForFunction(() => document.querySelector("#toggle")?.textContent === "Enable", { timeout: 5000 });
    const d = await admin("GET", `/tenants/t1/destinations/${destId}`);
    assert(d.disabled_at, "disabled through the API");
  });

  await test("another_tenants_destinations_never_appear", async () => {
    await page.goto(`${origin}/#/`, { waitUntil: "domcontentloaded" });
    await page.waitForSelector("[data-page=list]");
    const html = await page.content();
    assert(!html.includes(other.id) && !html.includes("tenant-two-private-endpoint"), "t2's destination shown");
    await page.goto(`${origin}/#/d/${encodeURIComponent(other.id)}`, { waitUntil: "domcontentloaded" });
    await page.waitForSelector(".errors");
    assert(!(await page.content()).includes("tenant-two-private-endpoint"), "t2's destination opened");
    const status = await page.evaluate(async (id) => {
      const token = sessionStorage.getItem("outrider-portal-token");
      const r = await fetch(`/api/v1/tenants/t2/destinations/${id}`, { headers: { authorization: `Bearer ${token}` } });
      return r.status;
    }, other.id);
    assert(status === 401 || status === 403 || status === 404, `t1's token read t2: ${status}`);
  });

  await test("first_load_size_and_time", async () => {
    const fresh = await browser.newPage();
    await fresh.setViewport({ width: 1280, height: 860 });
    await fresh.setCacheEnabled(false);
    const cdp = await fresh.createCDPSession();
    await cdp.send("Network.enable");
    const types = new Map();
    let bytes = 0;
    cdp.on("Network.responseReceived", (e) => types.set(e.requestId, e.response.url));
    cdp.on("Network.loadingFinished", (e) => {
      const url = types.get(e.requestId) || "";
      if (!url.includes("/api/v1/")) bytes += e.encodedDataLength;
    });
    await fresh.goto(await portalUrl(), { waitUntil: "networkidle0" });
    await fresh.waitForSelector("#destinations");
    const ms = await fresh.evaluate(() => performance.getEntriesByName("portal-list-rendered")[0]?.startTime);
    console.log(`first load: ${bytes} bytes on the wire (HTML, CSS, JS, headers included), list rendered ${ms?.toFixed(1)} ms after navigation start`);
    assert(ms !== undefined, "list rendered mark");
    await shot("list", fresh);
    await fresh.close();
  });

  await test("dark_theme_and_phone_width", async () => {
    const dark = await browser.newPage();
    await dark.goto(await portalUrl("dark"), { waitUntil: "domcontentloaded" });
    await dark.waitForSelector("#destinations");
    const theme = await dark.evaluate(() => document.documentElement.dataset.theme);
    assert(theme === "dark", `theme ${theme}`);
    await dark.setViewport({ width: 1280, height: 860 });
    await shot("list-dark", dark);
    await dark.setViewport({ width: 375, height: 740, isMobile: true, deviceScaleFactor: 2 });
    await dark.evaluate(() => {
      document.documentElement.dataset.theme = "light";
    });
    await sleep(100);
    const overflow = await dark.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert(overflow <= 0, `page wider than the phone by ${overflow}px`);
    await shot("list-phone", dark);
    await dark.close();
  });

  await test("keyboard_and_labels", async () => {
    await page.goto(`${origin}/#/new`, { waitUntil: "domcontentloaded" });
    await page.waitForSelector("[data-type=webhook]");
    await page.focus("[data-type=webhook]");
    await page.keyboard.press("Enter");
    await page.waitForSelector("#topic-all");
    await page.keyboard.press("Enter"); // submits the topics step (all topics is checked)
    await page.waitForSelector("#config-form");
    const unlabelled = await page.$$eval("input,select,textarea", (els) =>
      els.filter((e) => !(e.labels && e.labels.length) && !e.getAttribute("aria-label")).map((e) => e.id || e.outerHTML),
    );
    assert(unlabelled.length === 0, `inputs without a label: ${unlabelled}`);
  });

  await test("expired_session_goes_to_the_referer_url", async () => {
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
    const head = b64({ alg: "HS256", typ: "JWT" });
    const body = b64({ iss: "outpost", sub: "t1", iat: 1, exp: Math.floor(Date.now() / 1000) - 60 });
    const sig = createHmac("sha256", jwtSecret).update(`${head}.${body}`).digest("base64url");
    const p = await browser.newPage();
    await p.goto(`${origin}/?token=${head}.${body}.${sig}`, { waitUntil: "domcontentloaded" });
    await waitFor("the referer page", () => p.url().startsWith(`${recvBase}/referer`), 5000);
    await p.close();
  });

  assert(pageErrors.length === 0, `errors in the page: ${pageErrors.join("; ")}`);
} catch (e) {
  results.push(["setup", "FAILED"]);
  console.log(`FAIL  setup: ${e.stack || e}`);
} finally {
  await browser?.close().catch(() => {});
  server.kill("SIGKILL");
  receiver.close();
  rmSync(dir, { recursive: true, force: true });
}
const failed = results.filter(([, r]) => r !== "passed");
console.log(`Portal browser tests: ${results.length - failed.length}/${results.length} passed; screenshots in ${shots}`);
process.exit(failed.length ? 1 : 0);
