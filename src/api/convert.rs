//! Conversions between domain records and latchkey.v1 messages.

use prost_types::Timestamp;

use super::pb;
use crate::domain::model::{ClientInfo, LinkKind, Millis, Role, Session, User, UserStatus};
use crate::domain::sessions::NewSession;

pub fn timestamp(millis: Millis) -> Option<Timestamp> {
    Some(Timestamp {
        seconds: millis.div_euclid(1000),
        nanos: (millis.rem_euclid(1000) * 1_000_000) as i32,
    })
}

pub fn user_status(status: UserStatus) -> pb::user::Status {
    match status {
        UserStatus::Pending => pb::user::Status::Pending,
        UserStatus::Active => pb::user::Status::Active,
        UserStatus::Disabled => pb::user::Status::Disabled,
    }
}

/// `None` for the zero (unspecified) value and unknown numbers.
pub fn user_status_from(value: i32) -> Option<UserStatus> {
    match pb::user::Status::try_from(value).ok()? {
        pb::user::Status::Pending => Some(UserStatus::Pending),
        pb::user::Status::Active => Some(UserStatus::Active),
        pb::user::Status::Disabled => Some(UserStatus::Disabled),
        pb::user::Status::Unspecified => None,
    }
}

pub fn role_from(value: i32) -> Option<Role> {
    match pb::user::Role::try_from(value).ok()? {
        pb::user::Role::Client => Some(Role::Client),
        pb::user::Role::Staff => Some(Role::Staff),
        pb::user::Role::Unspecified => None,
    }
}

pub fn user(user: User) -> pb::User {
    pb::User {
        user_id: user.id,
        email: user.email,
        first_name: user.first_name,
        last_name: user.last_name,
        status: user_status(user.status).into(),
        role: match user.role {
            Role::Client => pb::user::Role::Client,
            Role::Staff => pb::user::Role::Staff,
        }
        .into(),
        mfa_enabled: user.mfa_enabled,
        email_verified: user.email_verified,
        created_at: timestamp(user.created_at),
        updated_at: timestamp(user.updated_at),
        last_login_at: user.last_login_at.and_then(timestamp),
        locale: user.locale.unwrap_or_default(),
    }
}

pub fn link_kind(kind: LinkKind) -> pb::LinkKind {
    match kind {
        LinkKind::Login => pb::LinkKind::LoginLink,
        LinkKind::Magic => pb::LinkKind::MagicLink,
        LinkKind::Enchanted => pb::LinkKind::EnchantedLink,
    }
}

pub fn session(new: NewSession) -> pb::Session {
    pb::Session {
        session_id: new.session.id,
        session_token: new.token.unwrap_or_default(),
        session_jwt: new.jwt,
        expires_at: timestamp(new.session.expires_at),
        user_id: new.session.user_id,
        created_at: timestamp(new.session.created_at),
        jwt_expires_at: timestamp(new.jwt_expires_at),
    }
}

/// A request's client metadata, as sent (the domain validates it).
pub fn client_from(client: Option<pb::ClientMetadata>) -> Option<ClientInfo> {
    client.map(|client| ClientInfo {
        ip_address: client.ip_address,
        user_agent: client.user_agent,
    })
}

/// A session as ListUserSessions shows it.
pub fn user_session(session: Session) -> pb::UserSession {
    use pb::user_session::Origin;
    pb::UserSession {
        session_id: session.id,
        created_at: timestamp(session.created_at),
        last_authenticated_at: session.last_authenticated_at.and_then(timestamp),
        expires_at: timestamp(session.expires_at),
        origin: match session.link_kind {
            LinkKind::Login => Origin::LoginLink,
            LinkKind::Magic => Origin::MagicLink,
            LinkKind::Enchanted => Origin::EnchantedLink,
        }
        .into(),
        via_otp: session.via_otp,
        client: session.client.map(|client| pb::ClientMetadata {
            ip_address: client.ip_address,
            user_agent: client.user_agent,
        }),
    }
}

/// A `google.protobuf.Struct` as JSON (custom claims).
pub fn json_object(value: prost_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    value
        .fields
        .into_iter()
        .map(|(key, value)| (key, json_value(value)))
        .collect()
}

fn json_value(value: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    use serde_json::Value;
    match value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(b),
        // Protobuf numbers are doubles; whole ones read better as integers in a JWT.
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => Value::from(n as i64),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
        Some(Kind::StringValue(s)) => Value::String(s),
        Some(Kind::ListValue(list)) => Value::Array(list.values.into_iter().map(json_value).collect()),
        Some(Kind::StructValue(object)) => Value::Object(json_object(object)),
    }
}
