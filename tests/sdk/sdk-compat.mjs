// Drives the official Outpost TypeScript SDK (@hookdeck/outpost-sdk) through
// every operation Outrider implements, against a real Outrider server it starts
// itself and a real local HTTP receiver. Any SDK validation error (a response
// the SDK's schemas reject) fails the run.
//
// Usage: OUTRIDER_BIN=/path/to/outrider node sdk-compat.mjs
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createTcpServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Outpost } from "@hookdeck/outpost-sdk";

const bin = process.env.OUTRIDER_BIN;
if (!bin) {
  console.error("OUTRIDER_BIN must point at the outrider binary");
  process.exit(2);
}
const apiKey = "sdk-admin-key";
// Ask the OS for a free port (a guessed one can collide with another service).
const port = await new Promise((resolve, reject) => {
  const probe = createTcpServer();
  probe.once("error", reject);
  probe.listen(0, "127.0.0.1", () => {
    const p = probe.address().port;
    probe.close(() => resolve(p));
  });
});
const dir = mkdtempSync(join(tmpdir(), "outrider-sdk-"));

// The receiver: records event ids, answers 200.
const received = [];
const receiver = createServer((req, res) => {
  let body = "";
  req.on("data", (c) => (body += c));
  req.on("end", () => {
    received.push({ id: req.headers["x-outpost-event-id"], body });
    res.writeHead(200, { "content-type": "text/plain" });
    res.end("ok");
  });
});
await new Promise((r) => receiver.listen(0, "127.0.0.1", r));
const hookUrl = `http://127.0.0.1:${receiver.address().port}/hook`;

const server = spawn(bin, [], {
  cwd: dir,
  env: {
    PATH: process.env.PATH,
    API_PORT: String(port),
    API_KEY: apiKey,
    API_JWT_SECRET: "sdk-jwt-secret",
    AES_ENCRYPTION_SECRET: "sdk-aes-secret",
    OUTRIDER_DATA_DIR: join(dir, "data"),
    OUTRIDER_ALLOW_PRIVATE_DESTINATIONS: "true",
    TOPICS: "user.created,user.deleted",
    RETRY_SCHEDULE: "1",
    LOG_LEVEL: "warn",
  },
  stdio: ["ignore", "inherit", "inherit"],
});
const serverURL = `http://127.0.0.1:${port}/api/v1`;

function cleanup() {
  server.kill("SIGKILL");
  receiver.close();
  rmSync(dir, { recursive: true, force: true });
}

async function waitHealthy() {
  for (let i = 0; i < 200; i++) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/healthz`);
      if (r.ok) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error("server did not become healthy");
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let passed = 0;
const failures = [];
async function step(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`  ok   ${name}`);
  } catch (e) {
    failures.push(name);
    console.log(`  FAIL ${name}: ${e?.name ?? ""} ${e?.message ?? e}`);
    if (e?.rawValue) console.log("       raw:", JSON.stringify(e.rawValue).slice(0, 400));
  }
}
function assert(cond, msg) {
  if (!cond) throw new Error(`assertion failed: ${msg}`);
}

try {
  await waitHealthy();
  const admin = new Outpost({ apiKey, serverURL });
  const T = "sdk_tenant";
  let dest, eventId, attemptId, token;

  await step("health.check", async () => {
    const h = await admin.health.check();
    assert(h.status === "healthy", JSON.stringify(h));
  });
  await step("topics.list", async () => {
    const t = await admin.topics.list();
    assert(JSON.stringify(t) === JSON.stringify(["user.created", "user.deleted"]), JSON.stringify(t));
  });
  await step("schemas.listDestinationTypes", async () => {
    const t = await admin.schemas.listDestinationTypes();
    assert(t.some((x) => x.type === "webhook"), "webhook listed");
  });
  await step("schemas.getDestinationType", async () => {
    const t = await admin.schemas.getDestinationType("webhook");
    assert(t.type === "webhook", "webhook");
  });
  await step("tenants.upsert (create)", async () => {
    const t = await admin.tenants.upsert(T, { metadata: { plan: "pro" } });
    assert(t.id === T, "id");
  });
  await step("tenants.upsert (update)", async () => {
    const t = await admin.tenants.upsert(T, { metadata: { plan: "team" } });
    assert(t.metadata?.plan === "team", "metadata");
  });
  await step("tenants.get", async () => {
    const t = await admin.tenants.get(T);
    assert(t.id === T && t.createdAt instanceof Date, JSON.stringify(t));
  });
  await step("tenants.list", async () => {
    const r = await admin.tenants.list({ limit: 10 });
    assert(r.models.some((t) => t.id === T), "listed");
  });
  await step("tenants.getToken", async () => {
    const r = await admin.tenants.getToken(T);
    token = r.token;
    assert(r.tenantId === T && token, "token");
  });
  await step("tenants.getPortalUrl", async () => {
    const r = await admin.tenants.getPortalUrl(T, "dark");
    assert(r.redirectUrl.includes("token=") && r.redirectUrl.includes("theme=dark"), r.redirectUrl);
  });
  await step("destinations.create", async () => {
    dest = await admin.destinations.create(T, {
      type: "webhook",
      topics: ["user.created"],
      config: { url: hookUrl },
      metadata: { team: "a" },
    });
    assert(dest.id && dest.type === "webhook", JSON.stringify(dest));
  });
  await step("destinations.list", async () => {
    const l = await admin.destinations.list(T);
    assert(l.length === 1 && l[0].id === dest.id, JSON.stringify(l));
  });
  await step("destinations.get", async () => {
    const d = await admin.destinations.get(T, dest.id);
    assert(d.id === dest.id, "id");
  });
  await step("destinations.update", async () => {
    const d = await admin.destinations.update(T, dest.id, { type: "webhook", topics: ["user.created", "user.deleted"] });
    assert(d.topics.length === 2, JSON.stringify(d.topics));
  });
  await step("destinations.disable", async () => {
    const d = await admin.destinations.disable(T, dest.id);
    assert(d.disabledAt instanceof Date, "disabled");
  });
  await step("destinations.enable", async () => {
    const d = await admin.destinations.enable(T, dest.id);
    assert(d.disabledAt === null || d.disabledAt === undefined, "enabled");
  });
  await step("publish", async () => {
    const r = await admin.publish({ tenantId: T, topic: "user.created", data: { user_id: "u1" }, metadata: { source: "sdk" } });
    eventId = r.id;
    assert(r.duplicate === false && r.destinationIds.includes(dest.id), JSON.stringify(r));
  });
  // Let the delivery and its attempt land.
  for (let i = 0; i < 100 && received.length === 0; i++) await sleep(50);
  await sleep(200);
  await step("events.list", async () => {
    const r = await admin.events.list({ tenantId: T, limit: 10 });
    assert(r.models.some((e) => e.id === eventId), "listed");
  });
  await step("events.get", async () => {
    const e = await admin.events.get(eventId);
    assert(e.id === eventId && e.data.user_id === "u1", JSON.stringify(e));
  });
  await step("attempts.list", async () => {
    const r = await admin.attempts.list({ tenantId: T, eventId, include: ["event.data", "response_data"] });
    assert(r.models.length === 1 && r.models[0].status === "success", JSON.stringify(r.models));
    attemptId = r.models[0].id;
  });
  await step("attempts.get", async () => {
    const a = await admin.attempts.get(attemptId);
    assert(a.id === attemptId, "id");
  });
  await step("destinations.listAttempts", async () => {
    const r = await admin.destinations.listAttempts({ tenantId: T, destinationId: dest.id });
    assert(r.models.length >= 1, "attempts");
  });
  await step("destinations.getAttempt", async () => {
    const a = await admin.destinations.getAttempt(T, dest.id, attemptId);
    assert(a.id === attemptId, "id");
  });
  await step("retry", async () => {
    const r = await admin.retry({ eventId, destinationId: dest.id });
    assert(r.success === true, JSON.stringify(r));
  });
  const window = () => ({ start: new Date(Date.now() - 3600_000), end: new Date(Date.now() + 60_000) });
  await step("metrics.getEventMetrics", async () => {
    const r = await admin.metrics.getEventMetrics({ time: window(), measures: ["count", "rate"], filtersTenantId: T });
    assert(r.data.length === 1 && r.data[0].metrics.count >= 1 && r.metadata.rowCount === 1, JSON.stringify(r));
  });
  await step("metrics.getAttemptMetrics", async () => {
    const r = await admin.metrics.getAttemptMetrics({
      time: window(), granularity: "1h", measures: ["count", "error_rate"], dimensions: ["status"], filtersTenantId: T,
    });
    assert(r.metadata.granularity === "1h" && r.data.some((d) => d.dimensions.status === "success" && d.metrics.count >= 1),
      JSON.stringify(r));
  });
  await step("tenant token: tenants.get and destinations.list", async () => {
    const t = new Outpost({ apiKey: token, serverURL }) // the SDK sends a tenant JWT as its bearer token;
    const me = await t.tenants.get(T);
    const l = await t.destinations.list(T);
    assert(me.id === T && l.length === 1, "tenant view");
  });
  await step("publish duplicate id", async () => {
    const r = await admin.publish({ id: eventId, tenantId: T, topic: "user.created", data: { user_id: "u1" } });
    assert(r.duplicate === true, JSON.stringify(r));
  });
  await step("destinations.delete", async () => {
    const r = await admin.destinations.delete(T, dest.id);
    assert(r.success === true, "deleted");
  });
  await step("tenants.delete", async () => {
    const r = await admin.tenants.delete(T);
    assert(r.success === true, "deleted");
  });
} finally {
  cleanup();
}
const total = passed + failures.length;
console.log(`SDK compat: ${passed}/${total} operations passed${failures.length ? " — failed: " + failures.join(", ") : ""}`);
process.exit(failures.length ? 1 : 0);
