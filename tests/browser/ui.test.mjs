// End-to-end test of Herald's web UI in a real browser: Debian's chromium
// driven by playwright-core, against the real herald binary started with
// demo data on a random port in a fresh data folder.
//
//   HERALD_BIN        the binary (default: ../../target/debug/herald)
//   CHROMIUM          the browser (default: /usr/bin/chromium)
//   ARTIFACTS_DIR     where screenshots go (default: ./artifacts)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { mkdtemp, mkdir, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { createHmac, randomBytes } from "node:crypto";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const HERALD = process.env.HERALD_BIN ?? path.resolve(here, "../../target/debug/herald");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const ARTIFACTS = process.env.ARTIFACTS_DIR ?? path.join(here, "artifacts");
const DEMO_ZONE = "Europe/Paris";
const VIEWER = { email: "viewer@example.com", password: "viewer password 123" };
const run = promisify(execFile);
/** The Standard Webhooks secret of the generic source the test posts events to. */
const WEBHOOK_KEY = randomBytes(32);

let dataDir, server, serverLog = "", base, demoPassword, browser;
/** Requests the browser tried to make to any other host. */
const foreign = [];

function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

function env() {
  return {
    ...process.env,
    HERALD_STORE__DATA_DIR: dataDir,
    HERALD_AUDIENCE__POLL_INTERVAL: "1s",
    HERALD_LOG__LEVEL: "warn",
    HERALD_INGEST__GENERIC__FIXTURES__SECRET: `whsec_${WEBHOOK_KEY.toString("base64")}`,
  };
}

async function herald(args, input) {
  const child = execFile(HERALD, args, { env: env() });
  if (input !== undefined) {
    child.stdin.end(input);
  }
  let stdout = "", stderr = "";
  child.stdout.on("data", (d) => (stdout += d));
  child.stderr.on("data", (d) => (stderr += d));
  const code = await new Promise((resolve) => child.on("close", resolve));
  assert.equal(code, 0, `herald ${args.join(" ")} failed: ${stderr}`);
  return stdout;
}

async function waitFor(check, what, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check().catch(() => undefined);
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${serverLog.slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** `2026-05-01T14:00:05` in the demo user's zone, `secondsAhead` from now. */
function localInput(secondsAhead) {
  const parts = new Intl.DateTimeFormat("sv-SE", {
    timeZone: DEMO_ZONE, year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
  }).format(new Date(Date.now() + secondsAhead * 1000));
  return parts.replace(" ", "T");
}

async function newPage(viewport = { width: 1200, height: 860 }) {
  const context = await browser.newContext({ viewport });
  await context.route("**/*", (route) => {
    const url = route.request().url();
    if (url.startsWith(base) || url.startsWith("data:") || url === "about:srcdoc") {
      return route.continue();
    }
    foreign.push(url);
    return route.abort();
  });
  return context.newPage();
}

async function signIn(page, email, password) {
  await page.goto(`${base}/ui/alerts`);
  await page.waitForURL(/\/ui\/sign-in/);
  await page.getByLabel("Email address").fill(email);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(/\/ui\/alerts$/);
}

/** Posts provider events as the generic source would, signed. */
async function postEvents(events) {
  const body = JSON.stringify(events);
  const id = `msg_${randomBytes(8).toString("hex")}`;
  const timestamp = Math.floor(Date.now() / 1000).toString();
  const signature = createHmac("sha256", WEBHOOK_KEY).update(`${id}.${timestamp}.${body}`).digest("base64");
  return fetch(`${base}/webhooks/generic/fixtures`, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "webhook-id": id,
      "webhook-timestamp": timestamp,
      "webhook-signature": `v1,${signature}`,
    },
    body,
  });
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  dataDir = await mkdtemp(path.join(tmpdir(), "herald-ui-"));
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  await herald(["users", "create", "--email", VIEWER.email, "--role", "viewer", "--password-stdin"], `${VIEWER.password}\n`);
  server = spawn(HERALD, ["serve", "--demo", "--listen", `127.0.0.1:${port}`], { env: env() });
  server.stdout.on("data", (d) => (serverLog += d));
  server.stderr.on("data", (d) => (serverLog += d));
  demoPassword = await waitFor(
    async () => serverLog.match(/sign in as demo@example\.com with the password (\S+)/)?.[1],
    "the demo's sign-in line",
  );
  await waitFor(async () => (await fetch(`${base}/healthz`)).ok, "Herald to listen");
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
  if (server) await new Promise((r) => server.once("close", r));
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

test("a marketer signs in, creates an alert, previews it, schedules it and sees it sent", async () => {
  const page = await newPage();
  await page.goto(`${base}/ui/sign-in`);
  await shot(page, "sign-in");
  await signIn(page, "demo@example.com", demoPassword);
  await shot(page, "alerts-list");

  await page.getByRole("link", { name: "New brand alert" }).click();
  // Inline validation: a missing name and no sales are named beside their fields.
  await page.getByRole("button", { name: "Save draft" }).click();
  await assert.doesNotReject(page.locator("#name-error").waitFor());
  await page.getByLabel("Name", { exact: false }).first().fill("Browser test: winter boots");
  await page.getByLabel("Subject").fill("Boots and denim, on sale now");
  await page.getByLabel("Template").selectOption({ label: "demo-brand-alert" });
  await page.locator('input.brand-all[data-brand="fjord"]').check();
  await page.locator('input.brand-all[data-brand="atlas-denim"]').check();
  assert.ok(await page.locator('input[name="sale_ids"][data-brand="fjord"]').first().isChecked(),
    "ticking a brand ticks its sales");
  await page.getByLabel("Send time", { exact: false }).fill(localInput(3));
  await page.getByLabel("Affinity threshold", { exact: false }).fill("0.6");
  await shot(page, "alert-form");
  await page.getByRole("button", { name: "Save draft" }).click();
  await page.waitForURL(/\/ui\/alerts\/[^/]+\?done=created/);
  const alertUrl = page.url().split("?")[0];
  await assert.doesNotReject(page.getByText("Draft created.").waitFor());

  await page.getByRole("link", { name: "Preview" }).click();
  await page.getByRole("link", { name: "Random member" }).click();
  const subject = await page.locator("#preview-subject").textContent();
  assert.match(subject, /on sale/i);
  assert.equal(await page.locator("iframe").count(), 2, "desktop and phone frames");
  const frame = page.frameLocator('iframe[title="The email at phone width"]');
  await assert.doesNotReject(frame.getByText("Unsubscribe from brand alerts").waitFor());
  assert.match(await page.locator("#preview-text").textContent(), /Unsubscribe/i);
  await shot(page, "alert-preview");

  await page.goto(alertUrl);
  await page.getByRole("link", { name: "Schedule" }).click();
  await page.getByRole("button", { name: "Yes, schedule it" }).click();
  await assert.doesNotReject(page.getByText("Scheduled: it is sent at its send time.").waitFor());

  await waitFor(async () => {
    await page.goto(alertUrl);
    return (await page.locator("#alert-state").textContent()) === "sent";
  }, "the alert to be sent", 120_000);
  const sent = Number(await page.locator("#count-sent").textContent());
  assert.ok(sent > 0, `messages were sent (${sent})`);
  assert.equal(Number(await page.locator("#audience-size").textContent()) >= sent, true);

  // Signed provider events about the alert move its counts.
  const alertId = alertUrl.split("/").pop();
  const now = new Date().toISOString().replace(/\.\d+Z$/, "Z");
  const event = (n, type) => ({
    id: `evt-${alertId}-${n}`, type, email: `member${n}@example.com`, occurred_at: now,
    custom_args: { alert_id: alertId, member_id: `m0000${n}` },
  });
  const posted = await postEvents([
    event(1, "delivered"), event(2, "delivered"), event(3, "delivered"),
    event(4, "open"), event(5, "open"), event(6, "click"), event(7, "bounce"),
  ]);
  assert.ok(posted.ok, `the webhook was accepted (${posted.status}: ${await posted.text()})`);
  await waitFor(async () => {
    await page.goto(alertUrl);
    return (await page.locator("#count-delivered").textContent()) === "3";
  }, "the delivered count to move");
  assert.equal(await page.locator("#count-opened").textContent(), "2");
  assert.equal(await page.locator("#count-clicked").textContent(), "1");
  assert.equal(await page.locator("#count-bounced").textContent(), "1");
  // The chart over time draws one line per followed type, with axes.
  const overTime = page.locator("#timeline svg.chart-over-time");
  await overTime.waitFor();
  assert.equal(await overTime.locator("polyline").count(), 4);
  assert.match(await overTime.getAttribute("aria-label"), /over time/);
  assert.equal(await page.locator("#timeline table.timeline tbody tr").count(), 1);
  await shot(page, "alert-sent");

  // The live tail lists the events and picks up a new one without a reload.
  await page.goto(`${base}/ui/events?type=bounce`);
  await page.locator("#event-tail").getByText("member7@example.com").waitFor();
  assert.equal(await page.locator("#event-tail").getByText("member1@example.com").count(), 0);
  const newer = await postEvents([{ ...event(8, "bounce"), id: `evt-${alertId}-tail` }]);
  assert.ok(newer.ok, `the webhook was accepted (${newer.status})`);
  await page.locator("#event-tail").getByText("member8@example.com").waitFor({ timeout: 30_000 });
  await shot(page, "live-events");
  await page.context().close();
});

test("an operator peeks a dead-letter queue and redrives it", async () => {
  await herald(["queues", "create", "ui-test.jobs", "--max-receives", "1"]);
  await herald(["queues", "send", "ui-test.jobs", '{"job":"resize","id":7}']);
  const key = (await herald(["keys", "create", "--name", "browser-test", "--scope", "admin"])).trim();
  const receive = () =>
    fetch(`${base}/api/queues/ui-test.jobs/receive`, {
      method: "POST",
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
      body: JSON.stringify({ visibility_seconds: 0.05 }),
    });
  assert.equal((await receive()).status, 200);
  // Past max_receives: the next receive moves the message to the DLQ.
  await waitFor(async () => {
    await receive();
    const out = await herald(["queues", "stats", "ui-test.jobs.dlq"]);
    return JSON.parse(out).visible === 1;
  }, "the message to be dead-lettered");

  const page = await newPage();
  await signIn(page, "demo@example.com", demoPassword);
  await page.getByRole("link", { name: "Queues" }).click();
  await shot(page, "queues");
  await page.getByRole("link", { name: "ui-test.jobs.dlq" }).click();
  await assert.doesNotReject(page.getByText('{"job":"resize","id":7}').waitFor());
  await shot(page, "dead-letter-queue");
  await page.getByRole("link", { name: "Redrive to ui-test.jobs" }).click();
  await page.getByRole("button", { name: "Yes, redrive them" }).click();
  await assert.doesNotReject(page.getByText("Moved 1 messages back to their queue.").waitFor());
  const stats = JSON.parse(await herald(["queues", "stats", "ui-test.jobs"]));
  assert.equal(stats.visible, 1, "the message is back in its queue");

  await page.getByRole("link", { name: "Jobs" }).click();
  await assert.doesNotReject(page.getByRole("heading", { name: "Jobs" }).waitFor());
  await shot(page, "jobs");
  await page.getByRole("link", { name: "Shards" }).click();
  await page.getByLabel("Customer id").fill("c-42");
  await page.getByRole("button", { name: "Look up" }).click();
  await assert.doesNotReject(page.locator("#placement").getByText("unknown").waitFor());
  await shot(page, "shards");
  await page.context().close();
});

test("a viewer sees but cannot change anything", async () => {
  const page = await newPage();
  await signIn(page, VIEWER.email, VIEWER.password);
  assert.equal(await page.getByRole("link", { name: "New brand alert" }).count(), 0);
  await page.getByRole("link", { name: /Browser test: winter boots/ }).click();
  assert.equal(await page.getByRole("link", { name: "Cancel alert" }).count(), 0);
  assert.equal(await page.getByRole("button", { name: "Send test" }).count(), 0);
  // The form is reachable by address; saving it is refused.
  await page.goto(`${base}/ui/alerts/new`);
  await page.getByLabel("Name", { exact: false }).first().fill("Should not exist");
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === "POST"),
    page.getByRole("button", { name: "Save draft" }).click(),
  ]);
  assert.equal(response.status(), 403);
  await assert.doesNotReject(page.getByText("Your role (viewer) can see this but not change it.").waitFor());
  await page.goto(`${base}/ui/alerts`);
  assert.equal(await page.getByText("Should not exist").count(), 0);
  await page.context().close();
});

test("a form without the CSRF token is refused", async () => {
  const page = await newPage();
  await signIn(page, "demo@example.com", demoPassword);
  await page.goto(`${base}/ui/brands`);
  await page.getByLabel("Id", { exact: false }).fill("forged");
  await page.getByLabel("Name").fill("Forged brand");
  await page.evaluate(() => document.querySelector('form[action="/ui/brands"] input[name="_csrf"]').remove());
  const [response] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === "POST"),
    page.getByRole("button", { name: "Add brand" }).click(),
  ]);
  assert.equal(response.status(), 403);
  await assert.doesNotReject(page.getByText(/CSRF token/).waitFor());
  await page.goto(`${base}/ui/brands`);
  assert.equal(await page.getByText("Forged brand").count(), 0, "nothing was stored");
  await page.context().close();
});

test("pages fit a phone and nothing is fetched from another host", async () => {
  const page = await newPage({ width: 375, height: 740 });
  await signIn(page, "demo@example.com", demoPassword);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the alert list fits 375 px (overflows by ${overflow} px)`);
  await shot(page, "alerts-list-phone");
  // Keyboard: the skip link is the first stop and moves focus to the content.
  await page.keyboard.press("Tab");
  assert.equal(await page.evaluate(() => document.activeElement.textContent), "Skip to content");
  await page.context().close();
  assert.deepEqual(foreign, [], "no request left for another host");
});
