#!/usr/bin/env python3
"""A Python client of latchkey, end to end, with stubs generated from proto/ by grpcio-tools.

    .venv/bin/python clients/python/latchkey_flow.py 127.0.0.1:50051 [--api-key KEY [--auth-required]] [--no-oauth]
        [--mail-dir DIR]
    .venv/bin/python clients/python/latchkey_flow.py 127.0.0.1:50051 --retry-check

Runs IssueLoginLink (a new email with first and last name) -> InspectToken -> VerifyToken (with the
device's client metadata) -> AuthenticateSession (by session token, then by session JWT) -> VerifyToken
of the same token again, which must fail FAILED_PRECONDITION with the google.rpc.ErrorInfo reason
TOKEN_ALREADY_USED read from the status details. Then the one-time code: LoginOrCreate with include_otp
-> the code read from the email's .eml file in --mail-dir (the file transport's folder, default
data/mail) -> VerifyOtp with a wrong code (OTP_INVALID), then the right one (a session) ->
ListUserSessions (both sessions, with how each was made and the device). Unless --no-oauth, it then runs the OAuth flow of the development default's `dev`
client: IssueLoginLink with `oauth` and PKCE -> VerifyToken (an authorization code) -> ExchangeCode.
With --api-key it sends `authorization: Bearer KEY` on every call (a development server, auth off,
accepts that too); with --auth-required it first checks that a call without a key fails
UNAUTHENTICATED with the reason API_KEY_INVALID.

Retries: the channel carries clients/retry-service-config.json, a gRPC retry policy that retries
UNAVAILABLE. A mutating call is retried only when it carries an `idempotency-key` (the server then
answers a repeat with the first call's answer); without one it goes over a second channel with
retries off. The flow sends a fresh key with every mutating call. --retry-check, against a server
whose store is down, makes one LoginOrCreate with a key and one without, and expects both to end
UNAVAILABLE (the test counts the attempts the server saw).

Prints one JSON object per line for each step (no secrets: tokens are shown by length only) and
exits 1 on the first mismatch. Set up with scripts/setup-clients (it generates clients/python/gen).
"""

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
import time
import urllib.parse
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "gen"))

try:
    import grpc
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from latchkey.v1 import passwordless_pb2, passwordless_pb2_grpc, sessions_pb2, sessions_pb2_grpc, users_pb2
except ImportError as error:  # pragma: no cover - a set-up problem, said plainly
    sys.exit(f"latchkey_flow.py: {error}. Run scripts/setup-clients, then use .venv/bin/python.")

TIMEOUT_SECONDS = 10
DOMAIN = "latchkey"
RETRY_POLICY = os.path.join(HERE, "..", "retry-service-config.json")
# The RPCs that change something: retried only with an idempotency-key.
MUTATING = {
    "IssueLoginLink", "LoginOrCreate", "SendEnchantedLink", "VerifyToken", "VerifyOtp", "PollSession", "ExchangeCode",
    "RevokeSession", "RevokeUserSessions", "UpdateUser", "DeleteUser",
}


class Mismatch(Exception):
    pass


def expect(condition, what):
    if not condition:
        raise Mismatch(what)


def emit(step, **fields):
    print(json.dumps({"step": step, **fields}, sort_keys=True), flush=True)


def timestamp(ts):
    return ts.ToJsonString() if ts.ByteSize() else None


def jwt_part(jwt, index):
    """Decodes the header (0) or payload (1) of a JWT, without checking it (jwt_offline.rs does that)."""
    part = jwt.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def error_info(error):
    """The google.rpc.ErrorInfo in the status details (trailer grpc-status-details-bin), or None."""
    status = rpc_status.from_call(error)  # google.rpc.Status, or None without details
    if status is None:
        return None
    for detail in status.details:  # google.protobuf.Any
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


class Client:
    def __init__(self, addr, api_key):
        with open(RETRY_POLICY) as policy:
            service_config = policy.read()
        retrying = grpc.insecure_channel(
            addr, options=[("grpc.service_config", service_config), ("grpc.enable_retries", 1)]
        )
        once = grpc.insecure_channel(addr, options=[("grpc.enable_retries", 0)])
        self.channels = (retrying, once)
        self.stubs = {
            channel: {
                "passwordless": passwordless_pb2_grpc.PasswordlessStub(channel),
                "sessions": sessions_pb2_grpc.SessionsStub(channel),
            }
            for channel in self.channels
        }
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def call(self, service, method, request, metadata=None, idempotency_key=None):
        """`service.method(request)`; over the retrying channel unless it is a mutating call without a key."""
        metadata = tuple(self.metadata if metadata is None else metadata)
        if idempotency_key is not None:
            metadata += (("idempotency-key", idempotency_key),)
        retrying, once = self.channels
        channel = once if method in MUTATING and idempotency_key is None else retrying
        stub = self.stubs[channel][service]
        return getattr(stub, method)(request, metadata=metadata, timeout=TIMEOUT_SECONDS)

    def expect_error(self, step, service, method, request, code, reason, metadata=None, idempotency_key=None):
        try:
            self.call(service, method, request, metadata, idempotency_key)
        except grpc.RpcError as error:
            info = error_info(error)
            emit(
                step,
                code=error.code().name,
                reason=info.reason if info else None,
                domain=info.domain if info else None,
                message=error.details(),
            )
            expect(error.code() == code, f"{step}: code {error.code().name}, expected {code.name}")
            expect(info is not None, f"{step}: no google.rpc.ErrorInfo in the status details")
            expect(info.domain == DOMAIN, f"{step}: ErrorInfo domain {info.domain!r}")
            expect(info.reason == reason, f"{step}: reason {info.reason!r}, expected {reason!r}")
            return
        raise Mismatch(f"{step}: the call succeeded, expected {code.name} {reason}")


def new_key():
    """A fresh idempotency key: one per logical operation, the same for its retries."""
    return str(uuid.uuid4())


DEVICE = {"ip_address": "192.0.2.10", "user_agent": "latchkey-flow (Python)"}


def emailed_code(mail_dir, email_id):
    """The one-time code in the email's .eml file (the file transport names it after the email id)."""
    path = os.path.join(mail_dir, f"{email_id}.eml")
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while not os.path.exists(path):
        expect(time.monotonic() < deadline, f"no email {path} within {TIMEOUT_SECONDS} s")
        time.sleep(0.05)
    with open(path, encoding="utf-8") as message:
        found = re.search(r"this code[^\n]*\n\s*\n\s*(\d{6,10})\s*\n", message.read())
    expect(found, f"no code in {path}")
    return found.group(1)


def s256(verifier):
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def run(addr, api_key, email, oauth, auth_required, mail_dir):
    client = Client(addr, api_key)
    pb = passwordless_pb2

    if auth_required:
        client.expect_error(
            "NoApiKey",
            "passwordless",
            "IssueLoginLink",
            pb.IssueLoginLinkRequest(email=email, first_name="Ada", last_name="Lovelace"),
            grpc.StatusCode.UNAUTHENTICATED,
            "API_KEY_INVALID",
            metadata=(),
        )

    issued = client.call(
        "passwordless",
        "IssueLoginLink",
        pb.IssueLoginLinkRequest(email=email, first_name="Ada", last_name="Lovelace"),
        idempotency_key=new_key(),
    )
    link = urllib.parse.urlsplit(issued.link)
    tokens = urllib.parse.parse_qs(link.query).get("token", [])
    expect(len(tokens) == 1, f"IssueLoginLink: no token in {issued.link!r}")
    token = tokens[0]
    emit(
        "IssueLoginLink",
        user_id=issued.user_id,
        user_created=issued.user_created,
        reused=issued.reused,
        link_base=f"{link.scheme}://{link.netloc}{link.path}",
        token_length=len(token),
        expires_at=timestamp(issued.expires_at),
    )
    expect(issued.user_created, "IssueLoginLink: user_created should be true for a new email")
    expect(issued.user_id.startswith("user-"), f"IssueLoginLink: user_id {issued.user_id!r}")

    inspected = client.call("passwordless", "InspectToken", pb.InspectTokenRequest(token=token))
    emit(
        "InspectToken",
        link_kind=pb.LinkKind.Name(inspected.link_kind),
        masked_email=inspected.masked_email,
        pkce_required=inspected.pkce_required,
        user_exists=inspected.user_exists,
        expires_at=timestamp(inspected.expires_at),
    )
    expect(inspected.link_kind == pb.LOGIN_LINK, "InspectToken: link_kind should be LOGIN_LINK")
    domain = email.split("@")[1]
    expect(
        inspected.masked_email.endswith("@" + domain) and "*" in inspected.masked_email,
        f"InspectToken: masked_email {inspected.masked_email!r}",
    )

    verified = client.call(
        "passwordless",
        "VerifyToken",
        pb.VerifyTokenRequest(token=token, client=sessions_pb2.ClientMetadata(**DEVICE)),
        idempotency_key=new_key(),
    )
    result = verified.WhichOneof("result")
    user = verified.user
    emit(
        "VerifyToken",
        result=result,
        link_kind=pb.LinkKind.Name(verified.link_kind),
        user_id=user.user_id,
        user_status=users_pb2.User.Status.Name(user.status),
        email_verified=user.email_verified,
        user_activated=verified.user_activated,
        session_id=verified.session.session_id,
        session_token_length=len(verified.session.session_token),
        session_expires_at=timestamp(verified.session.expires_at),
    )
    expect(result == "session", f"VerifyToken: result {result!r}, expected a session")
    expect(user.user_id == issued.user_id, "VerifyToken: another user")
    expect(user.status == users_pb2.User.Status.ACTIVE, "VerifyToken: the user should be ACTIVE")
    session = verified.session
    expect(session.session_token and session.session_jwt, "VerifyToken: session token and JWT expected")
    header = jwt_part(session.session_jwt, 0)
    expect(header.get("alg") == "EdDSA", f"session JWT header {header}")

    for credential in ("session_token", "session_jwt"):
        request = sessions_pb2.AuthenticateSessionRequest(**{credential: getattr(session, credential)})
        authenticated = client.call("sessions", "AuthenticateSession", request)
        claims = jwt_part(authenticated.session.session_jwt, 1)
        emit(
            "AuthenticateSession",
            by=credential,
            user_id=authenticated.user.user_id,
            session_id=authenticated.session.session_id,
            jwt_sub=claims.get("sub"),
            jwt_expires_at=timestamp(authenticated.session.jwt_expires_at),
        )
        expect(authenticated.session.session_id == session.session_id, f"AuthenticateSession by {credential}")
        expect(authenticated.user.user_id == issued.user_id, f"AuthenticateSession by {credential}: user")

    client.expect_error(
        "VerifyTokenAgain",
        "passwordless",
        "VerifyToken",
        pb.VerifyTokenRequest(token=token),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TOKEN_ALREADY_USED",
        idempotency_key=new_key(),
    )

    run_otp(client, email, issued.user_id, session.session_id, mail_dir)

    if oauth:
        run_oauth(client, issued.user_id)

    emit("done", ok=True)


def run_otp(client, email, user_id, link_session_id, mail_dir):
    pb = passwordless_pb2
    queued = client.call(
        "passwordless",
        "LoginOrCreate",
        pb.LoginOrCreateRequest(email=email, include_otp=True),
        idempotency_key=new_key(),
    )
    emit("LoginOrCreate", user_id=queued.user_id, user_created=queued.user_created)
    expect(queued.user_id == user_id, "LoginOrCreate: another user")
    code = emailed_code(mail_dir, queued.email_id)
    wrong = f"{(int(code) + 1) % 10 ** len(code):0{len(code)}d}"
    client.expect_error(
        "VerifyOtpWrong",
        "passwordless",
        "VerifyOtp",
        pb.VerifyOtpRequest(email_id=queued.email_id, otp=wrong),
        grpc.StatusCode.FAILED_PRECONDITION,
        "OTP_INVALID",
    )
    verified = client.call(
        "passwordless",
        "VerifyOtp",
        pb.VerifyOtpRequest(email_id=queued.email_id, otp=code, client=sessions_pb2.ClientMetadata(**DEVICE)),
        idempotency_key=new_key(),
    )
    emit(
        "VerifyOtp",
        code_length=len(code),
        link_kind=pb.LinkKind.Name(verified.link_kind),
        user_id=verified.user.user_id,
        session_id=verified.session.session_id,
    )
    expect(verified.session.session_token, "VerifyOtp: a session token")

    listed = client.call("sessions", "ListUserSessions", sessions_pb2.ListUserSessionsRequest(user_id=user_id))
    emit(
        "ListUserSessions",
        session_ids=[s.session_id for s in listed.sessions],
        origins=[sessions_pb2.UserSession.Origin.Name(s.origin) for s in listed.sessions],
        via_otp=[s.via_otp for s in listed.sessions],
        ip_addresses=[s.client.ip_address for s in listed.sessions],
        user_agents=[s.client.user_agent for s in listed.sessions],
        next_page_token=listed.next_page_token,
    )
    expect(
        [s.session_id for s in listed.sessions] == [link_session_id, verified.session.session_id],
        "ListUserSessions: the link's session, then the code's",
    )


def run_oauth(client, user_id, client_id="dev", redirect_uri="http://localhost:3000/oauth/callback"):
    pb = passwordless_pb2
    verifier = secrets.token_urlsafe(48)  # 64 characters of [A-Za-z0-9-_]
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    issued = client.call(
        "passwordless",
        "IssueLoginLink",
        pb.IssueLoginLinkRequest(
            user_id=user_id,
            oauth=pb.OAuthParameters(
                client_id=client_id,
                redirect_uri=redirect_uri,
                scope="openid email",
                state=state,
                nonce=nonce,
                code_challenge=s256(verifier),
                code_challenge_method="S256",
            ),
        ),
        idempotency_key=new_key(),
    )
    token = urllib.parse.parse_qs(urllib.parse.urlsplit(issued.link).query)["token"][0]
    verified = client.call(
        "passwordless", "VerifyToken", pb.VerifyTokenRequest(token=token), idempotency_key=new_key()
    )
    expect(verified.WhichOneof("result") == "authorization", "VerifyToken of an oauth link: an authorization")
    callback = urllib.parse.urlsplit(verified.authorization.redirect_url)
    query = urllib.parse.parse_qs(callback.query)
    emit(
        "VerifyTokenOAuth",
        callback=f"{callback.scheme}://{callback.netloc}{callback.path}",
        state_matches=query.get("state") == [state],
        code_matches=query.get("code") == [verified.authorization.code],
    )
    expect(query.get("state") == [state], "the callback URL carries state")
    expect(query.get("code") == [verified.authorization.code], "the callback URL carries the code")

    exchanged = client.call(
        "passwordless",
        "ExchangeCode",
        pb.ExchangeCodeRequest(
            grant_type="authorization_code",
            code=verified.authorization.code,
            code_verifier=verifier,
            client_id=client_id,
            redirect_uri=redirect_uri,
        ),
        idempotency_key=new_key(),
    )
    id_claims = jwt_part(exchanged.id_token, 1) if exchanged.id_token else {}
    emit(
        "ExchangeCode",
        token_type=exchanged.token_type,
        expires_in=exchanged.expires_in,
        scope=exchanged.scope,
        id_token_aud=id_claims.get("aud"),
        id_token_nonce_matches=id_claims.get("nonce") == nonce,
        id_token_sub=id_claims.get("sub"),
    )
    expect(exchanged.token_type == "Bearer", f"ExchangeCode: token_type {exchanged.token_type!r}")
    expect(exchanged.access_token, "ExchangeCode: an access token")
    expect(id_claims.get("nonce") == nonce, "ExchangeCode: the ID token carries the nonce")
    expect(id_claims.get("sub") == user_id, "ExchangeCode: the ID token's subject is the user")


def retry_check(addr, api_key):
    """Against a server whose store is down: a keyed LoginOrCreate (retried by the policy, then
    UNAVAILABLE) and an unkeyed one (UNAVAILABLE at once)."""
    client = Client(addr, api_key)
    for step, key in (("LoginOrCreateWithKey", new_key()), ("LoginOrCreateWithoutKey", None)):
        client.expect_error(
            step,
            "passwordless",
            "LoginOrCreate",
            passwordless_pb2.LoginOrCreateRequest(email=f"retry-{secrets.token_hex(6)}@example.com"),
            grpc.StatusCode.UNAVAILABLE,
            "STORE_UNAVAILABLE",
            idempotency_key=key,
        )
    emit("done", ok=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("addr", help="host:port of latchkey's gRPC port, e.g. 127.0.0.1:50051")
    parser.add_argument("--api-key", help="sent as `authorization: Bearer KEY` (servers with auth on)")
    parser.add_argument(
        "--auth-required", action="store_true", help="first check that a call without a key is refused"
    )
    parser.add_argument("--email", help="the new user's email (default: a random python-…@example.com)")
    parser.add_argument("--no-oauth", action="store_true", help="skip the OAuth flow (no `dev` client)")
    parser.add_argument(
        "--retry-check", action="store_true", help="against a server whose store is down: the retry policy"
    )
    parser.add_argument(
        "--mail-dir", default="data/mail", help="the file transport's folder, where the code's email lands"
    )
    args = parser.parse_args()
    email = args.email or f"python-{secrets.token_hex(6)}@example.com"
    try:
        if args.retry_check:
            retry_check(args.addr, args.api_key)
        else:
            run(
                args.addr,
                args.api_key,
                email,
                oauth=not args.no_oauth,
                auth_required=args.auth_required,
                mail_dir=args.mail_dir,
            )
    except Mismatch as mismatch:
        print(f"latchkey_flow.py: MISMATCH: {mismatch}", file=sys.stderr)
        return 1
    except grpc.RpcError as error:
        info = error_info(error)
        reason = f" ({info.reason})" if info else ""
        print(f"latchkey_flow.py: unexpected {error.code().name}{reason}: {error.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
