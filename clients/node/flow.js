#!/usr/bin/env node
// A Node.js client of latchkey, end to end: @grpc/grpc-js with @grpc/proto-loader loading
// proto/latchkey/v1/*.proto at run time (no generated code).
//
//   node clients/node/flow.js 127.0.0.1:50051 [--api-key KEY [--auth-required]] [--no-oauth] [--mail-dir DIR]
//   node clients/node/flow.js 127.0.0.1:50051 --retry-check
//
// The same flow as clients/python/latchkey_flow.py: IssueLoginLink (a new email with first and last
// name) -> InspectToken -> VerifyToken (with the device's client metadata) -> AuthenticateSession (by
// session token, then by session JWT) -> VerifyToken of the same token again, which must fail
// FAILED_PRECONDITION with the google.rpc.ErrorInfo reason TOKEN_ALREADY_USED, decoded from the
// `grpc-status-details-bin` trailer (a google.rpc.Status; grpc-js hands it over as raw bytes, so
// protobufjs decodes it with the vendored proto/google/rpc/*.proto). Then the one-time code:
// LoginOrCreate with include_otp -> the code read from the email's .eml file in --mail-dir (the file
// transport's folder, default data/mail) -> VerifyOtp with a wrong code (OTP_INVALID), then the right
// one -> ListUserSessions (both sessions, with how each was made and the device). Unless --no-oauth, then the OAuth flow of the `dev` client:
// IssueLoginLink with `oauth` and PKCE -> VerifyToken (an authorization code) -> ExchangeCode.
// With --api-key every call carries `authorization: Bearer KEY`; with --auth-required a call without
// a key must first fail UNAUTHENTICATED / API_KEY_INVALID.
//
// Retries: the channel carries clients/retry-service-config.json, a gRPC retry policy that retries
// UNAVAILABLE. A mutating call is retried only when it carries an `idempotency-key` (the server then
// answers a repeat with the first call's answer); without one it goes over a second channel with
// retries off. The flow sends a fresh key with every mutating call. --retry-check, against a server
// whose store is down, makes one LoginOrCreate with a key and one without, and expects both to end
// UNAVAILABLE (the test counts the attempts the server saw).
//
// Prints one JSON object per line per step (tokens by length only); exits 1 on the first mismatch.
// Set up with scripts/setup-clients (`npm ci` here).
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');

let grpc, protoLoader, protobuf;
try {
  grpc = require('@grpc/grpc-js');
  protoLoader = require('@grpc/proto-loader');
  protobuf = require('protobufjs');
} catch (error) {
  console.error(`flow.js: ${error.message.split('\n')[0]}. Run scripts/setup-clients (npm ci in clients/node).`);
  process.exit(1);
}

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
const TIMEOUT_MS = 10_000;
const DOMAIN = 'latchkey';
const RETRY_POLICY = path.resolve(__dirname, '..', 'retry-service-config.json');
// The RPCs that change something: retried only with an idempotency-key.
const MUTATING = new Set([
  'IssueLoginLink',
  'LoginOrCreate',
  'VerifyOtp',
  'SendEnchantedLink',
  'VerifyToken',
  'PollSession',
  'ExchangeCode',
  'RevokeSession',
  'RevokeUserSessions',
  'UpdateUser',
  'DeleteUser',
]);

// latchkey's API, straight from the .proto files. keepCase keeps the proto's snake_case field names
// (the default would camelCase them, and a snake_case key in a request would then be silently dropped).
const definition = protoLoader.loadSync(['latchkey/v1/passwordless.proto', 'latchkey/v1/sessions.proto'], {
  includeDirs: [PROTO_ROOT],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const latchkey = grpc.loadPackageDefinition(definition).latchkey.v1;

// google.rpc.Status and google.rpc.ErrorInfo, to read the status details.
const rpcProtos = new protobuf.Root();
rpcProtos.resolvePath = (_origin, target) => path.resolve(__dirname, '..', '..', 'third_party', target);
rpcProtos.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
const RpcStatus = rpcProtos.lookupType('google.rpc.Status');
const ErrorInfo = rpcProtos.lookupType('google.rpc.ErrorInfo');

class Mismatch extends Error {}

function expect(condition, what) {
  if (!condition) throw new Mismatch(what);
}

function emit(step, fields) {
  const line = { step, ...fields };
  const sorted = Object.fromEntries(Object.keys(line).sort().map((k) => [k, line[k]]));
  console.log(JSON.stringify(sorted));
}

function timestamp(ts) {
  if (!ts) return null;
  return new Date(Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6)).toISOString();
}

function jwtPart(jwt, index) {
  return JSON.parse(Buffer.from(jwt.split('.')[index], 'base64url').toString('utf8'));
}

const DEVICE = { ip_address: '192.0.2.10', user_agent: 'latchkey-flow (Node)' };

// The one-time code in the email's .eml file (the file transport names it after the email id).
async function emailedCode(mailDir, emailId) {
  const file = path.join(mailDir, `${emailId}.eml`);
  const deadline = Date.now() + TIMEOUT_MS;
  while (!fs.existsSync(file)) {
    expect(Date.now() < deadline, `no email ${file} within ${TIMEOUT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const found = /this code[^\n]*\n\s*\n\s*(\d{6,10})\s*\n/.exec(fs.readFileSync(file, 'utf8'));
  expect(found, `no code in ${file}`);
  return found[1];
}

function s256(verifier) {
  return crypto.createHash('sha256').update(verifier).digest('base64url');
}

// The google.rpc.ErrorInfo in an error's status details, or null.
function errorInfo(error) {
  const raw = error.metadata && error.metadata.get('grpc-status-details-bin');
  if (!raw || raw.length === 0) return null;
  const status = RpcStatus.decode(raw[0]);
  for (const any of status.details) {
    if (any.type_url === 'type.googleapis.com/google.rpc.ErrorInfo') {
      return ErrorInfo.toObject(ErrorInfo.decode(any.value));
    }
  }
  return null;
}

const codeName = (code) => Object.keys(grpc.status).find((name) => grpc.status[name] === code) || String(code);

// A fresh idempotency key: one per logical operation, the same for its retries.
const newKey = () => crypto.randomUUID();

class Client {
  constructor(addr, apiKey) {
    const credentials = grpc.credentials.createInsecure();
    const retrying = { 'grpc.service_config': fs.readFileSync(RETRY_POLICY, 'utf8'), 'grpc.enable_retries': 1 };
    this.passwordless = new latchkey.Passwordless(addr, credentials, retrying);
    this.sessions = new latchkey.Sessions(addr, credentials, { channelOverride: this.passwordless.getChannel() });
    // Mutating calls without an idempotency-key: never retried.
    const passwordlessOnce = new latchkey.Passwordless(addr, credentials, { 'grpc.enable_retries': 0 });
    const sessionsOnce = new latchkey.Sessions(addr, credentials, { channelOverride: passwordlessOnce.getChannel() });
    this.once = new Map([
      [this.passwordless, passwordlessOnce],
      [this.sessions, sessionsOnce],
    ]);
    this.apiKey = apiKey;
  }

  metadata(withKey, idempotencyKey) {
    const metadata = new grpc.Metadata();
    if (withKey && this.apiKey) metadata.set('authorization', `Bearer ${this.apiKey}`);
    if (idempotencyKey) metadata.set('idempotency-key', idempotencyKey);
    return metadata;
  }

  // stub.method(request), over the retrying channel unless it is a mutating call without a key.
  call(stub, method, request, { withKey = true, idempotencyKey = null } = {}) {
    const target = MUTATING.has(method) && !idempotencyKey ? this.once.get(stub) : stub;
    const metadata = this.metadata(withKey, idempotencyKey);
    return new Promise((resolve, reject) => {
      target[method](request, metadata, { deadline: Date.now() + TIMEOUT_MS }, (error, response) =>
        error ? reject(error) : resolve(response),
      );
    });
  }

  async expectError(step, stub, method, request, code, reason, options = {}) {
    try {
      await this.call(stub, method, request, options);
    } catch (error) {
      if (error instanceof Mismatch || error.code === undefined) throw error;
      const info = errorInfo(error);
      emit(step, {
        code: codeName(error.code),
        reason: info ? info.reason : null,
        domain: info ? info.domain : null,
        message: error.details,
      });
      expect(error.code === code, `${step}: code ${codeName(error.code)}, expected ${codeName(code)}`);
      expect(info !== null, `${step}: no google.rpc.ErrorInfo in the status details`);
      expect(info.domain === DOMAIN, `${step}: ErrorInfo domain ${info.domain}`);
      expect(info.reason === reason, `${step}: reason ${info.reason}, expected ${reason}`);
      return;
    }
    throw new Mismatch(`${step}: the call succeeded, expected ${codeName(code)} ${reason}`);
  }

  close() {
    this.passwordless.close();
    this.once.get(this.passwordless).close();
  }
}

async function run({ addr, apiKey, email, oauth, authRequired, mailDir }) {
  const client = new Client(addr, apiKey);
  const { passwordless, sessions } = client;
  try {
    if (authRequired) {
      await client.expectError(
        'NoApiKey',
        passwordless,
        'IssueLoginLink',
        { email, first_name: 'Ada', last_name: 'Lovelace' },
        grpc.status.UNAUTHENTICATED,
        'API_KEY_INVALID',
        { withKey: false },
      );
    }

    const issued = await client.call(
      passwordless,
      'IssueLoginLink',
      { email, first_name: 'Ada', last_name: 'Lovelace' },
      { idempotencyKey: newKey() },
    );
    const link = new URL(issued.link);
    const token = link.searchParams.get('token');
    expect(token, `IssueLoginLink: no token in ${issued.link}`);
    emit('IssueLoginLink', {
      user_id: issued.user_id,
      user_created: issued.user_created,
      reused: issued.reused,
      link_base: `${link.origin}${link.pathname}`,
      token_length: token.length,
      expires_at: timestamp(issued.expires_at),
    });
    expect(issued.user_created, 'IssueLoginLink: user_created should be true for a new email');
    expect(issued.user_id.startsWith('user-'), `IssueLoginLink: user_id ${issued.user_id}`);

    const inspected = await client.call(passwordless, 'InspectToken', { token });
    emit('InspectToken', {
      link_kind: inspected.link_kind,
      masked_email: inspected.masked_email,
      pkce_required: inspected.pkce_required,
      user_exists: inspected.user_exists,
      expires_at: timestamp(inspected.expires_at),
    });
    expect(inspected.link_kind === 'LOGIN_LINK', `InspectToken: link_kind ${inspected.link_kind}`);
    const domain = email.split('@')[1];
    expect(
      inspected.masked_email.endsWith(`@${domain}`) && inspected.masked_email.includes('*'),
      `InspectToken: masked_email ${inspected.masked_email}`,
    );

    const verified = await client.call(passwordless, 'VerifyToken', { token, client: DEVICE }, { idempotencyKey: newKey() });
    const { user, session } = verified;
    emit('VerifyToken', {
      result: verified.result,
      link_kind: verified.link_kind,
      user_id: user.user_id,
      user_status: user.status,
      email_verified: user.email_verified,
      user_activated: verified.user_activated,
      session_id: session ? session.session_id : null,
      session_token_length: session ? session.session_token.length : 0,
      session_expires_at: session ? timestamp(session.expires_at) : null,
    });
    expect(verified.result === 'session', `VerifyToken: result ${verified.result}, expected a session`);
    expect(user.user_id === issued.user_id, 'VerifyToken: another user');
    expect(user.status === 'ACTIVE', `VerifyToken: user status ${user.status}`);
    expect(session.session_token && session.session_jwt, 'VerifyToken: session token and JWT expected');
    const header = jwtPart(session.session_jwt, 0);
    expect(header.alg === 'EdDSA', `session JWT header ${JSON.stringify(header)}`);

    for (const credential of ['session_token', 'session_jwt']) {
      const authenticated = await client.call(sessions, 'AuthenticateSession', { [credential]: session[credential] });
      const claims = jwtPart(authenticated.session.session_jwt, 1);
      emit('AuthenticateSession', {
        by: credential,
        user_id: authenticated.user.user_id,
        session_id: authenticated.session.session_id,
        jwt_sub: claims.sub,
        jwt_expires_at: timestamp(authenticated.session.jwt_expires_at),
      });
      expect(authenticated.session.session_id === session.session_id, `AuthenticateSession by ${credential}`);
      expect(authenticated.user.user_id === issued.user_id, `AuthenticateSession by ${credential}: user`);
    }

    await client.expectError(
      'VerifyTokenAgain',
      passwordless,
      'VerifyToken',
      { token },
      grpc.status.FAILED_PRECONDITION,
      'TOKEN_ALREADY_USED',
      { idempotencyKey: newKey() },
    );

    await runOtp(client, email, issued.user_id, session.session_id, mailDir);
    if (oauth) await runOAuth(client, issued.user_id);
    emit('done', { ok: true });
  } finally {
    client.close();
  }
}

async function runOtp(client, email, userId, linkSessionId, mailDir) {
  const queued = await client.call(
    client.passwordless,
    'LoginOrCreate',
    { email, include_otp: true },
    { idempotencyKey: newKey() },
  );
  emit('LoginOrCreate', { user_id: queued.user_id, user_created: queued.user_created });
  expect(queued.user_id === userId, 'LoginOrCreate: another user');
  const code = await emailedCode(mailDir, queued.email_id);
  const wrong = String((Number(code) + 1) % 10 ** code.length).padStart(code.length, '0');
  await client.expectError(
    'VerifyOtpWrong',
    client.passwordless,
    'VerifyOtp',
    { email_id: queued.email_id, otp: wrong },
    grpc.status.FAILED_PRECONDITION,
    'OTP_INVALID',
  );
  const verified = await client.call(
    client.passwordless,
    'VerifyOtp',
    { email_id: queued.email_id, otp: code, client: DEVICE },
    { idempotencyKey: newKey() },
  );
  emit('VerifyOtp', {
    code_length: code.length,
    link_kind: verified.link_kind,
    user_id: verified.user.user_id,
    session_id: verified.session.session_id,
  });
  expect(verified.session.session_token, 'VerifyOtp: a session token');

  const listed = await client.call(client.sessions, 'ListUserSessions', { user_id: userId });
  const ids = listed.sessions.map((s) => s.session_id);
  emit('ListUserSessions', {
    session_ids: ids,
    origins: listed.sessions.map((s) => s.origin),
    via_otp: listed.sessions.map((s) => s.via_otp),
    ip_addresses: listed.sessions.map((s) => (s.client ? s.client.ip_address : '')),
    user_agents: listed.sessions.map((s) => (s.client ? s.client.user_agent : '')),
    next_page_token: listed.next_page_token,
  });
  expect(
    JSON.stringify(ids) === JSON.stringify([linkSessionId, verified.session.session_id]),
    "ListUserSessions: the link's session, then the code's",
  );
}

async function runOAuth(client, userId, clientId = 'dev', redirectUri = 'http://localhost:3000/oauth/callback') {
  const verifier = crypto.randomBytes(48).toString('base64url'); // 64 characters of [A-Za-z0-9-_]
  const state = crypto.randomBytes(16).toString('base64url');
  const nonce = crypto.randomBytes(16).toString('base64url');
  const issued = await client.call(
    client.passwordless,
    'IssueLoginLink',
    {
      user_id: userId,
      oauth: {
        client_id: clientId,
        redirect_uri: redirectUri,
        scope: 'openid email',
        state,
        nonce,
        code_challenge: s256(verifier),
        code_challenge_method: 'S256',
      },
    },
    { idempotencyKey: newKey() },
  );
  const token = new URL(issued.link).searchParams.get('token');
  const verified = await client.call(client.passwordless, 'VerifyToken', { token }, { idempotencyKey: newKey() });
  expect(verified.result === 'authorization', `VerifyToken of an oauth link: ${verified.result}`);
  const callback = new URL(verified.authorization.redirect_url);
  emit('VerifyTokenOAuth', {
    callback: `${callback.origin}${callback.pathname}`,
    state_matches: callback.searchParams.get('state') === state,
    code_matches: callback.searchParams.get('code') === verified.authorization.code,
  });
  expect(callback.searchParams.get('state') === state, 'the callback URL carries state');
  expect(callback.searchParams.get('code') === verified.authorization.code, 'the callback URL carries the code');

  const exchanged = await client.call(
    client.passwordless,
    'ExchangeCode',
    {
      grant_type: 'authorization_code',
      code: verified.authorization.code,
      code_verifier: verifier,
      client_id: clientId,
      redirect_uri: redirectUri,
    },
    { idempotencyKey: newKey() },
  );
  const idClaims = exchanged.id_token ? jwtPart(exchanged.id_token, 1) : {};
  emit('ExchangeCode', {
    token_type: exchanged.token_type,
    expires_in: Number(exchanged.expires_in), // an int64: a string with longs: String
    scope: exchanged.scope,
    id_token_aud: idClaims.aud,
    id_token_nonce_matches: idClaims.nonce === nonce,
    id_token_sub: idClaims.sub,
  });
  expect(exchanged.token_type === 'Bearer', `ExchangeCode: token_type ${exchanged.token_type}`);
  expect(exchanged.access_token, 'ExchangeCode: an access token');
  expect(idClaims.nonce === nonce, 'ExchangeCode: the ID token carries the nonce');
  expect(idClaims.sub === userId, "ExchangeCode: the ID token's subject is the user");
}

// Against a server whose store is down: a keyed LoginOrCreate (retried by the policy, then
// UNAVAILABLE) and an unkeyed one (UNAVAILABLE at once).
async function retryCheck({ addr, apiKey }) {
  const client = new Client(addr, apiKey);
  try {
    for (const [step, idempotencyKey] of [
      ['LoginOrCreateWithKey', newKey()],
      ['LoginOrCreateWithoutKey', null],
    ]) {
      await client.expectError(
        step,
        client.passwordless,
        'LoginOrCreate',
        { email: `retry-${crypto.randomBytes(6).toString('hex')}@example.com` },
        grpc.status.UNAVAILABLE,
        'STORE_UNAVAILABLE',
        { idempotencyKey },
      );
    }
    emit('done', { ok: true });
  } finally {
    client.close();
  }
}

function parseArgs(argv) {
  const options = { addr: null, apiKey: null, email: null, oauth: true, authRequired: false, retryCheck: false, mailDir: 'data/mail' };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--api-key') options.apiKey = argv[++i];
    else if (arg === '--email') options.email = argv[++i];
    else if (arg === '--no-oauth') options.oauth = false;
    else if (arg === '--mail-dir') options.mailDir = argv[++i];
    else if (arg === '--auth-required') options.authRequired = true;
    else if (arg === '--retry-check') options.retryCheck = true;
    else if (!arg.startsWith('-') && !options.addr) options.addr = arg;
    else throw new Error(`unknown argument ${arg}`);
  }
  if (!options.addr) {
    throw new Error(
      'usage: node flow.js HOST:PORT [--api-key KEY [--auth-required]] [--email EMAIL] [--no-oauth] [--mail-dir DIR] [--retry-check]',
    );
  }
  options.email = options.email || `node-${crypto.randomBytes(6).toString('hex')}@example.com`;
  return options;
}

async function main() {
  let options;
  try {
    options = parseArgs(process.argv.slice(2));
  } catch (error) {
    console.error(`flow.js: ${error.message}`);
    return 2;
  }
  try {
    await (options.retryCheck ? retryCheck(options) : run(options));
    return 0;
  } catch (error) {
    if (error instanceof Mismatch) {
      console.error(`flow.js: MISMATCH: ${error.message}`);
    } else if (error.code !== undefined && error.metadata) {
      const info = errorInfo(error);
      console.error(`flow.js: unexpected ${codeName(error.code)}${info ? ` (${info.reason})` : ''}: ${error.details}`);
    } else {
      console.error(`flow.js: ${error.stack || error}`);
    }
    return 1;
  }
}

main().then((code) => {
  process.exitCode = code;
});
