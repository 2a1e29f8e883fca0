//! The hosted pages' site: where browsers reach it, its branding, and its templates
//! (`templates/pages/`), rendered with HTML escaping; the stylesheet carries the accent colour,
//! with text on it in black or white, whichever contrasts more.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::Environment;
use serde::Serialize;

use super::browser::page_headers;
use super::{END_SESSION_PATH, SIGN_IN_PREFIX};
use crate::config::Config;
use crate::crypto::ServerKey;

const PAGES: &[(&str, &str)] = &[
    ("layout.html", include_str!("../../templates/pages/layout.html")),
    ("sign_in.html", include_str!("../../templates/pages/sign_in.html")),
    ("wait.html", include_str!("../../templates/pages/wait.html")),
    ("confirm.html", include_str!("../../templates/pages/confirm.html")),
    ("message.html", include_str!("../../templates/pages/message.html")),
    ("logout.html", include_str!("../../templates/pages/logout.html")),
];
const STYLESHEET: &str = include_str!("../../templates/pages/site.css");
pub const WAIT_SCRIPT: &str = include_str!("../../templates/pages/wait.js");

/// Where static assets are served.
pub const ASSETS: &str = "/oauth/sign-in/assets";

pub struct Site {
    /// The HTTP port's address as browsers see it, without a trailing slash.
    pub public_url: String,
    /// Cookies get `Secure` when the pages are served over https.
    pub secure_cookies: bool,
    product: String,
    logo_url: Option<String>,
    stylesheet: String,
    env: Environment<'static>,
    pub(crate) server_key: ServerKey,
}

/// Relative luminance of `#rrggbb` (WCAG 2).
fn luminance(color: &str) -> f64 {
    let channel = |at: usize| {
        let value = f64::from(u8::from_str_radix(&color[at..at + 2], 16).unwrap_or(0)) / 255.0;
        if value <= 0.039_28 {
            value / 12.92
        } else {
            ((value + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5)
}

/// Black or white, whichever reads better on `accent`.
fn text_on(accent: &str) -> &'static str {
    let l = luminance(accent);
    if (1.05) / (l + 0.05) >= (l + 0.05) / 0.05 {
        "#ffffff"
    } else {
        "#000000"
    }
}

impl Site {
    pub fn new(config: &Config, server_key: ServerKey) -> Result<Self, String> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::Html);
        for (name, source) in PAGES {
            env.add_template(name, source)
                .map_err(|error| format!("page template {name}: {error}"))?;
        }
        let accent = config.sign_in.accent_color.as_str();
        let mut css = Environment::new();
        css.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        let stylesheet = css
            .render_str(STYLESHEET, minijinja::context! { accent, on_accent => text_on(accent) })
            .map_err(|error| format!("stylesheet: {error}"))?;
        let public_url = config.public_url().to_string();
        Ok(Self {
            secure_cookies: public_url.starts_with("https://"),
            public_url,
            product: config
                .sign_in
                .product_name
                .clone()
                .unwrap_or_else(|| config.mail.product_name.clone()),
            logo_url: config.sign_in.logo_url.clone(),
            stylesheet,
            env,
            server_key,
        })
    }

    pub fn product(&self) -> &str {
        &self.product
    }

    /// The URL the links in sign-in emails point at.
    pub fn confirm_url(&self) -> String {
        format!("{}{SIGN_IN_PREFIX}confirm", self.public_url)
    }

    /// A page with the headers every page carries.
    pub fn page(&self, status: StatusCode, template: &str, title: &str, page: impl Serialize) -> Response {
        let common = minijinja::context! {
            title,
            product => &self.product,
            logo_url => self.logo_url.as_deref(),
            assets => ASSETS,
            sign_in => SIGN_IN_PREFIX.trim_end_matches('/'),
            end_session => END_SESSION_PATH,
            ..minijinja::Value::from_serialize(&page)
        };
        let html = self
            .env
            .get_template(template)
            .and_then(|t| t.render(&common))
            .unwrap_or_else(|error| {
                tracing::error!(%error, template, "a page did not render");
                "<!doctype html><title>Error</title><p>This page could not be shown.</p>".into()
            });
        let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
        page_headers(response.headers_mut());
        response
    }

    /// A page that only says something, with an optional link.
    pub fn message(&self, status: StatusCode, title: &str, message: &str, action: Option<(&str, &str)>) -> Response {
        self.page(
            status,
            "message.html",
            title,
            minijinja::context! {
                message,
                alert => !status.is_success(),
                action_url => action.map(|(url, _)| url),
                action_label => action.map(|(_, label)| label),
            },
        )
    }

    pub fn stylesheet(&self) -> &str {
        &self.stylesheet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_on_the_accent_colour_contrasts() {
        assert_eq!(text_on("#1f5fbf"), "#ffffff");
        assert_eq!(text_on("#ffd400"), "#000000");
        assert_eq!(text_on("#000000"), "#ffffff");
    }
}
