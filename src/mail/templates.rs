//! Email templates: built-in login, sign-up and enchanted templates, each with a subject, an HTML
//! and a plain-text part, and custom ones by id from a folder
//! (`<templates_dir>/<id>/{subject.txt, body.html, body.txt}`), rendered by minijinja. HTML parts
//! are escaped; custom HTML may `{% extends "layout.html" %}`.

use std::collections::HashSet;
use std::path::Path;

use minijinja::Environment;
use serde::Serialize;

use crate::domain::TemplateCatalog;
use crate::domain::model::EmailKind;

const BUILT_IN: &[(&str, &str)] = &[
    ("layout.html", include_str!("../../templates/layout.html")),
    ("login.subject.txt", include_str!("../../templates/login.subject.txt")),
    ("login.html", include_str!("../../templates/login.html")),
    ("login.txt", include_str!("../../templates/login.txt")),
    ("signup.subject.txt", include_str!("../../templates/signup.subject.txt")),
    ("signup.html", include_str!("../../templates/signup.html")),
    ("signup.txt", include_str!("../../templates/signup.txt")),
    (
        "enchanted.subject.txt",
        include_str!("../../templates/enchanted.subject.txt"),
    ),
    ("enchanted.html", include_str!("../../templates/enchanted.html")),
    ("enchanted.txt", include_str!("../../templates/enchanted.txt")),
];

const CUSTOM_PARTS: [&str; 3] = ["subject.txt", "body.html", "body.txt"];

/// What every template can use.
#[derive(Debug, Serialize)]
pub struct Context {
    pub product: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    /// The first (for login and sign-up, the only) link.
    pub link: String,
    pub links: Vec<NumberedLink>,
    /// How long the links live, e.g. "1 hour".
    pub expires: String,
    /// The one-time code that works instead of the link, or empty when the email has none.
    pub otp: String,
}

#[derive(Debug, Serialize)]
pub struct NumberedLink {
    pub number: String,
    pub url: String,
}

#[derive(Debug, PartialEq)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
}

pub struct Templates {
    env: Environment<'static>,
    custom: HashSet<String>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Templates {
    /// The built-in templates plus every custom template under `custom_dir`; a template that does
    /// not parse stops start-up.
    pub fn load(custom_dir: Option<&Path>) -> Result<Self, String> {
        let mut env = Environment::new();
        for (name, source) in BUILT_IN {
            env.add_template(name, source)
                .map_err(|error| format!("built-in template {name}: {error}"))?;
        }
        let mut custom = HashSet::new();
        if let Some(dir) = custom_dir {
            let entries = std::fs::read_dir(dir).map_err(|error| format!("cannot read {}: {error}", dir.display()))?;
            for entry in entries {
                let entry = entry.map_err(|error| error.to_string())?;
                if !entry.path().is_dir() {
                    continue;
                }
                let id = entry.file_name().to_string_lossy().into_owned();
                // Hidden entries are not templates: a Kubernetes ConfigMap or Secret volume keeps
                // its files in `..data` and a timestamped `..2026_…` folder beside the symlinks.
                if id.starts_with('.') {
                    continue;
                }
                if !valid_id(&id) {
                    return Err(format!("template folder {id:?}: ids are 1-64 of A-Z a-z 0-9 - _"));
                }
                for part in CUSTOM_PARTS {
                    let path = entry.path().join(part);
                    let source = std::fs::read_to_string(&path)
                        .map_err(|error| format!("template {id}: cannot read {}: {error}", path.display()))?;
                    // minijinja 2.24 panics on some malformed templates (`{% import "x" as 1 %}`,
                    // found by fuzzing): a bad template must stop start-up with a message instead.
                    let added = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        env.add_template_owned(format!("custom/{id}/{part}"), source)
                    }))
                    .map_err(|_| format!("template {id}/{part}: the template engine cannot compile it"))?;
                    added.map_err(|error| format!("template {id}/{part}: {error}"))?;
                }
                custom.insert(id);
            }
        }
        Ok(Self { env, custom })
    }

    pub fn render(&self, kind: EmailKind, template_id: Option<&str>, context: &Context) -> Result<Rendered, String> {
        let names: [String; 3] = match template_id {
            Some(id) => CUSTOM_PARTS.map(|part| format!("custom/{id}/{part}")),
            None => {
                let base = match kind {
                    EmailKind::Login => "login",
                    EmailKind::Signup => "signup",
                    EmailKind::Enchanted => "enchanted",
                };
                [
                    format!("{base}.subject.txt"),
                    format!("{base}.html"),
                    format!("{base}.txt"),
                ]
            }
        };
        let render = |name: &str, extra: Option<&str>| -> Result<String, String> {
            let template = self.env.get_template(name).map_err(|error| error.to_string())?;
            let rendered = match extra {
                Some(subject) => template
                    .render(minijinja::context! { subject => subject, ..minijinja::Value::from_serialize(context) }),
                None => template.render(context),
            };
            rendered.map_err(|error| format!("{name}: {error}"))
        };
        let subject = render(&names[0], None)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let html = render(&names[1], Some(&subject))?;
        let text = render(&names[2], None)?;
        Ok(Rendered { subject, html, text })
    }
}

impl TemplateCatalog for Templates {
    fn contains(&self, template_id: &str) -> bool {
        self.custom.contains(template_id)
    }
}

/// "1 hour", "7 days", "45 minutes".
pub fn describe_minutes(minutes: i64) -> String {
    let (value, unit) = if minutes % 1440 == 0 {
        (minutes / 1440, "day")
    } else if minutes % 60 == 0 {
        (minutes / 60, "hour")
    } else {
        (minutes, "minute")
    };
    format!("{value} {unit}{}", if value == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_template_the_engine_panics_on_is_refused_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("broken");
        std::fs::create_dir(&template).unwrap();
        std::fs::write(template.join("subject.txt"), "Hi").unwrap();
        std::fs::write(template.join("body.html"), "{% import \"x\" as 1 %}").unwrap();
        std::fs::write(template.join("body.txt"), "Hi").unwrap();
        let error = super::Templates::load(Some(dir.path())).err().expect("refused");
        assert!(error.contains("broken/body.html"), "{error}");
    }

    use super::*;

    fn context(first_name: &str) -> Context {
        Context {
            product: "Acme".into(),
            first_name: first_name.into(),
            last_name: String::new(),
            email: "ann@example.com".into(),
            link: "https://app.example.com/cb?token=abc&x=1".into(),
            links: vec![NumberedLink {
                number: "42".into(),
                url: "https://app.example.com/cb?t=abc".into(),
            }],
            expires: describe_minutes(60),
            otp: String::new(),
        }
    }

    #[test]
    fn built_in_templates_render_and_escape_html() {
        let templates = Templates::load(None).unwrap();
        let rendered = templates
            .render(EmailKind::Login, None, &context("<b>Ann</b>"))
            .unwrap();
        assert_eq!(rendered.subject, "Your sign-in link for Acme");
        assert!(
            rendered.html.contains("&lt;b&gt;Ann&lt;&#x2f;b&gt;") || rendered.html.contains("&lt;b&gt;Ann&lt;/b&gt;")
        );
        assert!(rendered.html.contains("token=abc&amp;x=1"));
        assert!(rendered.text.contains("<b>Ann</b>"), "text is not escaped");
        assert!(rendered.text.contains("https://app.example.com/cb?token=abc&x=1"));
        assert!(rendered.text.contains("expires in 1 hour"));
        let enchanted = templates.render(EmailKind::Enchanted, None, &context("")).unwrap();
        assert!(enchanted.text.contains("42: https://app.example.com/cb?t=abc"));
        assert!(!templates.contains("login"), "built-ins are not custom ids");
    }

    #[test]
    fn the_code_shows_beside_the_link_only_when_there_is_one() {
        let templates = Templates::load(None).unwrap();
        for kind in [EmailKind::Login, EmailKind::Signup, EmailKind::Enchanted] {
            let without = templates.render(kind, None, &context("Ann")).unwrap();
            assert!(!without.text.contains("code"), "{kind:?}: {}", without.text);
            assert!(!without.html.contains("code"), "{kind:?}");
            let with = templates
                .render(
                    kind,
                    None,
                    &Context {
                        otp: "048213".into(),
                        ..context("Ann")
                    },
                )
                .unwrap();
            assert!(with.text.contains("048213"), "{kind:?}: {}", with.text);
            assert!(with.html.contains("048213"), "{kind:?}");
            assert!(!with.subject.contains("048213"), "the subject shows in notifications");
        }
    }

    #[test]
    fn custom_templates_load_by_id() {
        let dir = tempfile::tempdir().unwrap();
        let welcome = dir.path().join("welcome-v2");
        std::fs::create_dir(&welcome).unwrap();
        std::fs::write(welcome.join("subject.txt"), "Hello {{ first_name }}").unwrap();
        std::fs::write(
            welcome.join("body.html"),
            "{% extends \"layout.html\" %}{% block content %}<a href=\"{{ link }}\">go</a>{% endblock %}",
        )
        .unwrap();
        std::fs::write(welcome.join("body.txt"), "Go: {{ link }}").unwrap();
        // A ConfigMap volume's bookkeeping folders sit beside the templates and are skipped.
        std::fs::create_dir(dir.path().join("..data")).unwrap();
        std::fs::create_dir(dir.path().join("..2026_11_24_10_00_00.123")).unwrap();
        let templates = Templates::load(Some(dir.path())).unwrap();
        assert!(templates.contains("welcome-v2"));
        let rendered = templates
            .render(EmailKind::Signup, Some("welcome-v2"), &context("Ann"))
            .unwrap();
        assert_eq!(rendered.subject, "Hello Ann");
        // minijinja also escapes `/` (as &#x2f;), which every HTML reader decodes.
        assert!(
            rendered.html.contains("token=abc&amp;x=1\">go</a>"),
            "{}",
            rendered.html
        );
        std::fs::write(welcome.join("body.txt"), "{% if %}").unwrap();
        let error = Templates::load(Some(dir.path()))
            .err()
            .expect("a broken template stops loading");
        assert!(error.contains("welcome-v2/body.txt"), "{error}");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(describe_minutes(60), "1 hour");
        assert_eq!(describe_minutes(10_080), "7 days");
        assert_eq!(describe_minutes(45), "45 minutes");
        assert_eq!(describe_minutes(1440), "1 day");
    }
}
