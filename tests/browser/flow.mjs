// The hosted sign-in pages in a real browser (Debian's chromium, driven by playwright-core), with
// a relying party built on openid-client, a certified OpenID Connect library: discovery, the
// authorize URL, the code exchange at the HTTP token endpoint with the library's own ID token
// checks, and userinfo. tests/browser_flow.rs starts latchkey and runs this script; it prints the
// secrets it saw as its last line, so the Rust side can check that none reached the server's log.
//
// Environment: LATCHKEY_URL (the HTTP port, also the issuer), RP_PORT (where this script serves
// the relying party's callbacks), MAIL_DIR (the file transport's folder), CHROMIUM (the browser
// binary), SECOND_SECRET (the confidential client's secret),
// SCREENSHOTS (optional: a folder for screenshots of each page at phone and desktop widths).
import assert from "node:assert/strict";
import { readdir, readFile } from "node:fs/promises";
import { createServer } from "node:http";
import { join } from "node:path";
import { chromium } from "playwright-core";
import * as client from "openid-client";

const server = new URL(process.env.LATCHKEY_URL);
const mailDir = process.env.MAIL_DIR;
const RP = `http://127.0.0.1:${process.env.RP_PORT}`;
const CALLBACK = `${RP}/oauth/callback`;
const SECOND_CALLBACK = `${RP}/second/callback`;
// The relying party's own HTTP server: it records every URL the browser brings back.
const callbacks = [];
const rpServer = createServer((request, response) => {
  callbacks.push(new URL(request.url, RP));
  response.writeHead(200, { "content-type": "text/html" }).end("<title>relying party</title><p>back at the application");
});
await new Promise((resolve) => rpServer.listen(Number(process.env.RP_PORT), "127.0.0.1", resolve));
const seen = { emails: [], links: [], codes: [] };
const screenshots = process.env.SCREENSHOTS;
const timeout = 15000;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  args: [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});

function step(name) {
  console.log(`browser flow: ${name}`);
}

async function newContext(options = {}) {
  const context = await browser.newContext(options);
  context.setDefaultTimeout(timeout);
  return context;
}

/** The URL the browser brought back to the relying party with this `state`. */
function backWith(state) {
  return waitFor(() => callbacks.find((url) => url.searchParams.get("state") === state), `the callback with state ${state}`);
}

async function waitFor(condition, what) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The link with `number` from the newest email to `address` (the file transport's .eml). */
async function linkFromMail(address, number) {
  return waitFor(async () => {
    const names = (await readdir(mailDir)).filter((name) => name.endsWith(".eml"));
    for (const name of names) {
      const text = await readFile(join(mailDir, name), "utf8");
      if (!text.includes(address)) continue;
      const match = text.match(new RegExp(`^${number}: (\\S+)$`, "m"));
      if (match && !seen.links.includes(match[1])) {
        seen.links.push(match[1]);
        return match[1];
      }
    }
    return null;
  }, `the email to ${address}`);
}

async function shoot(page, name) {
  if (!screenshots) return;
  for (const [width, height, label] of [[390, 780, "phone"], [1280, 800, "desktop"]]) {
    await page.setViewportSize({ width, height });
    await page.screenshot({ path: join(screenshots, `${name}-${label}.png`) });
  }
}

async function rp(clientId, secret) {
  const config = await client.discovery(
    server,
    clientId,
    { id_token_signed_response_alg: "EdDSA" },
    secret ? client.ClientSecretBasic(secret) : client.None(),
    { execute: [client.allowInsecureRequests] },
  );
  return config;
}

async function authorizeUrl(config, redirectUri, extra = {}) {
  const verifier = client.randomPKCECodeVerifier();
  const checks = { pkceCodeVerifier: verifier, expectedState: client.randomState(), expectedNonce: client.randomNonce() };
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope: "openid email profile",
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: "S256",
    state: checks.expectedState,
    nonce: checks.expectedNonce,
    ...extra,
  });
  return { url, checks };
}

async function exchange(config, callbackUrl, checks, email) {
  const tokens = await client.authorizationCodeGrant(config, callbackUrl, checks);
  const claims = tokens.claims();
  assert.equal(claims.email, email);
  assert.equal(claims.iss, server.href.replace(/\/$/, ""));
  const info = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  assert.equal(info.email, email);
  assert.equal(info.email_verified, true);
  seen.codes.push(callbackUrl.searchParams.get("code"));
  return { tokens, claims };
}

/** Types the email on the sign-in page and returns the number the "check your email" page shows. */
async function startSignIn(page, url, email, shots = false) {
  await page.goto(url.href);
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  if (shots) await shoot(page, "sign-in");
  await page.getByLabel("Email address").fill(email);
  await page.getByRole("button", { name: "Email me a sign-in link" }).click();
  await page.getByRole("heading", { name: "Check your email" }).waitFor();
  const number = (await page.locator(".number").textContent()).trim();
  assert.match(number, /^[1-9][0-9]$/);
  if (shots) await shoot(page, "check-your-email");
  return number;
}

const dev = await rp("dev");
assert.equal(dev.serverMetadata().authorization_endpoint, new URL("/oauth/authorize", server).href);

step("cross-device: the laptop starts, the phone opens the link, the laptop continues by itself");
const ann = "ann@example.com";
seen.emails.push(ann);
const laptop = await newContext({ viewport: { width: 1280, height: 800 } });
const laptopPage = await laptop.newPage();
const first = await authorizeUrl(dev, CALLBACK);
const number = await startSignIn(laptopPage, first.url, ann, true);
const link = await linkFromMail(ann, number);
const phone = await newContext({ viewport: { width: 390, height: 780 }, isMobile: true, hasTouch: true });
const phonePage = await phone.newPage();
await phonePage.goto(link);
const button = phonePage.getByRole("button", { name: "Continue as a***@example.com" });
await button.waitFor();
await shoot(phonePage, "confirm");
await button.click();
await phonePage.getByRole("heading", { name: "You are signed in" }).waitFor();
await shoot(phonePage, "signed-in-on-phone");
const callback = await backWith(first.checks.expectedState);
await laptopPage.waitForURL((url) => url.href.startsWith(CALLBACK));
assert.ok(phonePage.url().startsWith(server.href), "the phone stays on latchkey's page");
const signedIn = await exchange(dev, callback, first.checks, ann);

step("prompt=none with the browser session: a code at once; without one: login_required");
const silent = await authorizeUrl(dev, CALLBACK, { prompt: "none" });
await laptopPage.goto(silent.url.href);
await exchange(dev, await backWith(silent.checks.expectedState), silent.checks, ann);
const stranger = await (await newContext()).newPage();
const noSession = await authorizeUrl(dev, CALLBACK, { prompt: "none" });
await stranger.goto(noSession.url.href);
const refused = await backWith(noSession.checks.expectedState);
assert.equal(refused.searchParams.get("error"), "login_required");
assert.equal(refused.searchParams.get("code"), null);

step("single sign-on into a second (confidential) client without a second email");
const emailsBefore = (await readdir(mailDir)).length;
const second = await rp("second", process.env.SECOND_SECRET);
const secondAuth = await authorizeUrl(second, SECOND_CALLBACK);
await laptopPage.goto(secondAuth.url.href);
const secondTokens = await exchange(second, await backWith(secondAuth.checks.expectedState), secondAuth.checks, ann);
assert.equal(secondTokens.claims.sub, signedIn.claims.sub);
assert.equal((await readdir(mailDir)).length, emailsBefore, "no email was sent");

step("a confidential client with a wrong secret is refused");
const wrong = await rp("second", "not-the-secret");
const wrongAuth = await authorizeUrl(wrong, SECOND_CALLBACK);
await laptopPage.goto(wrongAuth.url.href);
const wrongCallback = await backWith(wrongAuth.checks.expectedState);
// 401 with WWW-Authenticate: the library raises the challenge and keeps the response.
const failure = await client.authorizationCodeGrant(wrong, wrongCallback, wrongAuth.checks).then(
  () => assert.fail("a wrong secret was accepted"),
  (error) => error,
);
assert.equal(failure.status, 401);
assert.equal(failure.cause[0].scheme, "basic");
assert.equal((await failure.response.json()).error, "invalid_client");

step("logout ends the browser session");
const logout = client.buildEndSessionUrl(dev, {
  id_token_hint: signedIn.tokens.id_token,
  post_logout_redirect_uri: `${RP}/`,
  state: "bye",
});
await laptopPage.goto(logout.href);
assert.equal((await backWith("bye")).pathname, "/");
const afterLogout = await authorizeUrl(dev, CALLBACK, { prompt: "none" });
await laptopPage.goto(afterLogout.url.href);
assert.equal((await backWith(afterLogout.checks.expectedState)).searchParams.get("error"), "login_required");
// The sign-out confirmation (no id_token_hint), for the screenshots.
await laptopPage.goto(new URL("/oauth/logout", server).href);
await laptopPage.getByRole("button", { name: "Sign out" }).waitFor();
await shoot(laptopPage, "sign-out");

step("same device, after a mail scanner opened the link: the person's click still works");
const bo = "bo@example.com";
seen.emails.push(bo);
const desk = await newContext();
const deskPage = await desk.newPage();
const same = await authorizeUrl(dev, CALLBACK);
const sameNumber = await startSignIn(deskPage, same.url, bo);
const sameLink = await linkFromMail(bo, sameNumber);
const scanned = await fetch(sameLink);
assert.equal(scanned.status, 200);
assert.match(await scanned.text(), /Continue as b\*\*\*@example\.com/);
const emailTab = await desk.newPage();
await emailTab.goto(sameLink);
await emailTab.getByRole("button", { name: "Continue as b***@example.com" }).click();
await exchange(dev, await backWith(same.checks.expectedState), same.checks, bo);
// Whichever page of the browser collected the sign-in went on; the other says so and stops
// (no form of the wait page left), so no second code can follow.
await waitFor(async () => {
  const pages = [deskPage, emailTab];
  const atApp = pages.filter((page) => page.url().startsWith(CALLBACK));
  if (atApp.length !== 1) return false;
  const other = pages.find((page) => !page.url().startsWith(CALLBACK));
  try {
    return (await other.locator("#continue").count()) === 0 && (await other.locator("h1").count()) === 1;
  } catch {
    return false; // between two documents
  }
}, "one page at the application, the other settled");
const sameState = same.checks.expectedState;
assert.equal(callbacks.filter((url) => url.searchParams.get("state") === sameState).length, 1, "one code only");
const again = await (await fetch(sameLink)).text();
assert.match(again, /already used/, "the used link says so");

step("two sign-ins at once in one browser (two tabs): each waits for its own link and request");
const [di, dj] = ["di@example.com", "dj@example.com"];
seen.emails.push(di, dj);
const tabs = await newContext();
const [tabA, tabB] = [await tabs.newPage(), await tabs.newPage()];
const [forA, forB] = [await authorizeUrl(dev, CALLBACK), await authorizeUrl(dev, CALLBACK)];
const numberA = await startSignIn(tabA, forA.url, di);
const numberB = await startSignIn(tabB, forB.url, dj);
const otherPhone = await (await newContext()).newPage();
await otherPhone.goto(await linkFromMail(dj, numberB));
await otherPhone.getByRole("button", { name: "Continue as d***@example.com" }).click();
await exchange(dev, await backWith(forB.checks.expectedState), forB.checks, dj);
await tabB.waitForURL((url) => url.href.startsWith(CALLBACK));
assert.equal(await tabA.locator(".number").textContent(), numberA, "tab A still waits for its own link");
await otherPhone.goto(await linkFromMail(di, numberA));
await otherPhone.getByRole("button", { name: "Continue as d***@example.com" }).click();
await exchange(dev, await backWith(forA.checks.expectedState), forA.checks, di);
await tabA.waitForURL((url) => url.href.startsWith(CALLBACK));

step("without JavaScript: 'I pressed the link' continues");
const cy = "cy@example.com";
seen.emails.push(cy);
const plainPage = await (await newContext({ javaScriptEnabled: false })).newPage();
const noScript = await authorizeUrl(dev, CALLBACK);
const plainNumber = await startSignIn(plainPage, noScript.url, cy);
await plainPage.getByRole("button", { name: "I pressed the link" }).click();
await plainPage.getByText("The link has not been pressed yet").waitFor();
const plainLink = await linkFromMail(cy, plainNumber);
const phone2 = await (await newContext()).newPage();
await phone2.goto(plainLink);
await phone2.getByRole("button", { name: "Continue as c***@example.com" }).click();
await phone2.getByRole("heading", { name: "You are signed in" }).waitFor();
await plainPage.getByRole("button", { name: "I pressed the link" }).click();
await exchange(dev, await backWith(noScript.checks.expectedState), noScript.checks, cy);

await browser.close();
rpServer.close();
console.log(JSON.stringify({ secrets: [...seen.emails, ...seen.links.map((l) => new URL(l).searchParams.get("t")), ...seen.codes] }));
