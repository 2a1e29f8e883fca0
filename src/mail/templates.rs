//! Email templates: built-in login, sign-up and enchanted templates in English, German, French and
//! Spanish, each with a subject, an HTML and a plain-text part, and custom ones by id from a folder
//! (`<templates_dir>/<id>/{subject.txt, body.html, body.txt}`, and the same per language in
//! `<templates_dir>/<id>/<BCP 47 tag>/`), rendered by minijinja. HTML parts are escaped; custom
//! HTML may `{% extends "layout.html" %}`.
//!
//! An email's language picks the template: its tag, then that tag with one subtag fewer each time
//! (`de-CH`, `de`), then the same for `mail.default_locale`, then the custom template's own
//! folder, or English for the built-ins. A language nothing matches falls back; it never fails.

use std::collections::HashMap;
use std::path::Path;

use minijinja::Environment;
use serde::Serialize;

use crate::domain::TemplateCatalog;
use crate::domain::locale;
use crate::domain::model::EmailKind;

/// The languages of the built-in templates; the first is the last resort.
pub const BUILT_IN_LANGUAGES: [&str; 4] = ["en", "de", "fr", "es"];

macro_rules! built_in_language {
    ($lang:literal) => {
        [
            (
                concat!($lang, "/login.subject.txt"),
                include_str!(concat!("../../templates/", $lang, "/login.subject.txt")),
            ),
            (
                concat!($lang, "/login.html"),
                include_str!(concat!("../../templates/", $lang, "/login.html")),
            ),
            (
                concat!($lang, "/login.txt"),
                include_str!(concat!("../../templates/", $lang, "/login.txt")),
            ),
            (
                concat!($lang, "/signup.subject.txt"),
                include_str!(concat!("../../templates/", $lang, "/signup.subject.txt")),
            ),
            (
                concat!($lang, "/signup.html"),
                include_str!(concat!("../../templates/", $lang, "/signup.html")),
            ),
            (
                concat!($lang, "/signup.txt"),
                include_str!(concat!("../../templates/", $lang, "/signup.txt")),
            ),
            (
                concat!($lang, "/enchanted.subject.txt"),
                include_str!(concat!("../../templates/", $lang, "/enchanted.subject.txt")),
            ),
            (
                concat!($lang, "/enchanted.html"),
                include_str!(concat!("../../templates/", $lang, "/enchanted.html")),
            ),
            (
                concat!($lang, "/enchanted.txt"),
                include_str!(concat!("../../templates/", $lang, "/enchanted.txt")),
            ),
        ]
    };
}

const BUILT_IN: [[(&str, &str); 9]; 4] = [
    built_in_language!("en"),
    built_in_language!("de"),
    built_in_language!("fr"),
    built_in_language!("es"),
];

const LAYOUT: &str = include_str!("../../templates/layout.html");

const CUSTOM_PARTS: [&str; 3] = ["subject.txt", "body.html", "body.txt"];

/// What every template can use. Rendering adds `expires` (the links' lifetime in the template's
/// language, e.g. "1 hour", "1 Stunde") and `lang` (the template's language, e.g. "de").
#[derive(Debug, Serialize)]
pub struct Context {
    pub product: String,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    /// The first (for login and sign-up, the only) link.
    pub link: String,
    pub links: Vec<NumberedLink>,
    /// How long the links live, in minutes.
    pub expires_minutes: i64,
    /// A one-time code to show beside the links, if the email carries one.
    pub otp: Option<String>,
    /// The language the email was asked for (a BCP 47 tag such as "de-AT").
    pub locale: String,
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
    /// The language of the template used (for the built-ins "en", "de", "fr" or "es").
    pub lang: String,
}

pub struct Templates {
    env: Environment<'static>,
    /// Custom template ids, each with the languages it has a folder for (lower case → canonical).
    custom: HashMap<String, HashMap<String, String>>,
    /// `mail.default_locale`.
    default_locale: String,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Hidden entries are not templates: a Kubernetes ConfigMap or Secret volume keeps its files in
/// `..data` and a timestamped `..2026_…` folder beside the symlinks.
fn hidden(name: &str) -> bool {
    name.starts_with('.')
}

/// The folders in `dir`, hidden ones left out, as (name, path).
fn folders(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|error| format!("cannot read {}: {error}", dir.display()))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| error.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !hidden(&name) {
            found.push((name, entry.path()));
        }
    }
    Ok(found)
}

/// Adds the three parts in `folder` as `<prefix>/<part>`; `what` names them in errors.
fn add_parts(env: &mut Environment<'static>, folder: &Path, prefix: &str, what: &str) -> Result<(), String> {
    for part in CUSTOM_PARTS {
        let path = folder.join(part);
        let source = std::fs::read_to_string(&path)
            .map_err(|error| format!("template {what}: cannot read {}: {error}", path.display()))?;
        // minijinja 2.24 panics on some malformed templates (`{% import "x" as 1 %}`, found by
        // fuzzing): a bad template must stop start-up with a message instead.
        let added = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            env.add_template_owned(format!("{prefix}/{part}"), source)
        }))
        .map_err(|_| format!("template {what}/{part}: the template engine cannot compile it"))?;
        added.map_err(|error| format!("template {what}/{part}: {error}"))?;
    }
    Ok(())
}

impl Templates {
    /// The built-in templates plus every custom template under `custom_dir`, with its language
    /// folders; a template that does not parse, or a language folder that is not a BCP 47 tag,
    /// stops start-up. `default_locale` is `mail.default_locale`.
    pub fn load(custom_dir: Option<&Path>, default_locale: &str) -> Result<Self, String> {
        let mut env = Environment::new();
        env.add_template("layout.html", LAYOUT)
            .map_err(|error| format!("built-in template layout.html: {error}"))?;
        for (name, source) in BUILT_IN.iter().flatten() {
            env.add_template(name, source)
                .map_err(|error| format!("built-in template {name}: {error}"))?;
        }
        let mut custom = HashMap::new();
        if let Some(dir) = custom_dir {
            for (id, folder) in folders(dir)? {
                if !valid_id(&id) {
                    return Err(format!("template folder {id:?}: ids are 1-64 of A-Z a-z 0-9 - _"));
                }
                add_parts(&mut env, &folder, &format!("custom/{id}"), &id)?;
                let mut languages = HashMap::new();
                for (name, language_folder) in folders(&folder)? {
                    let tag = locale::tag("locale", &name).ok().flatten().ok_or_else(|| {
                        format!(
                            "template {id}: folder {name:?} is not a language; a template's folders are BCP 47 tags such as de or pt-BR"
                        )
                    })?;
                    let key = tag.to_ascii_lowercase();
                    if languages.insert(key.clone(), tag.clone()).is_some() {
                        return Err(format!("template {id}: two folders for language {tag}"));
                    }
                    add_parts(
                        &mut env,
                        &language_folder,
                        &format!("custom/{id}/{key}"),
                        &format!("{id}/{name}"),
                    )?;
                }
                custom.insert(id, languages);
            }
        }
        Ok(Self {
            env,
            custom,
            default_locale: default_locale.to_string(),
        })
    }

    /// The languages to try for `locale`, best first (see the module's comment), lower case.
    fn candidates(&self, locale: &str) -> Vec<String> {
        let mut chain = locale::fallbacks(locale);
        for tag in locale::fallbacks(&self.default_locale) {
            if !chain.contains(&tag) {
                chain.push(tag);
            }
        }
        chain
    }

    /// The names of the three parts to render and the language they are in.
    fn choose(
        &self,
        kind: EmailKind,
        template_id: Option<&str>,
        locale: &str,
    ) -> Result<([String; 3], String), String> {
        let candidates = self.candidates(locale);
        match template_id {
            Some(id) => {
                let languages = self.custom.get(id).ok_or_else(|| format!("no email template {id:?}"))?;
                let (prefix, lang) = match candidates.iter().find_map(|tag| languages.get_key_value(tag)) {
                    Some((key, tag)) => (format!("custom/{id}/{key}"), tag.clone()),
                    // The template's own folder is in the language its author chose, which the
                    // default names best.
                    None => (format!("custom/{id}"), self.default_locale.clone()),
                };
                Ok((CUSTOM_PARTS.map(|part| format!("{prefix}/{part}")), lang))
            }
            None => {
                let lang = candidates
                    .iter()
                    .map(String::as_str)
                    .find(|tag| BUILT_IN_LANGUAGES.contains(tag))
                    .unwrap_or(BUILT_IN_LANGUAGES[0]);
                let base = match kind {
                    EmailKind::Login => "login",
                    EmailKind::Signup => "signup",
                    EmailKind::Enchanted => "enchanted",
                };
                Ok((
                    [
                        format!("{lang}/{base}.subject.txt"),
                        format!("{lang}/{base}.html"),
                        format!("{lang}/{base}.txt"),
                    ],
                    lang.to_string(),
                ))
            }
        }
    }

    /// Renders the email in the template that best matches `context.locale`.
    pub fn render(&self, kind: EmailKind, template_id: Option<&str>, context: &Context) -> Result<Rendered, String> {
        let (names, lang) = self.choose(kind, template_id, &context.locale)?;
        let expires = describe_minutes(&lang, context.expires_minutes);
        let base = minijinja::context! {
            expires => expires,
            lang => lang,
            ..minijinja::Value::from_serialize(context)
        };
        let render = |name: &str, extra: Option<&str>| -> Result<String, String> {
            let template = self.env.get_template(name).map_err(|error| error.to_string())?;
            let rendered = match extra {
                Some(subject) => template.render(minijinja::context! { subject => subject, ..base.clone() }),
                None => template.render(&base),
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
        Ok(Rendered {
            subject,
            html,
            text,
            lang,
        })
    }
}

impl TemplateCatalog for Templates {
    fn contains(&self, template_id: &str) -> bool {
        self.custom.contains_key(template_id)
    }
}

/// A lifetime as the built-in templates say "expires in …" in `lang`: "1 hour", "7 days",
/// "45 minutes"; German in the dative ("in 7 Tagen"). Other languages read English.
pub fn describe_minutes(lang: &str, minutes: i64) -> String {
    let (value, unit) = if minutes % 1440 == 0 {
        (minutes / 1440, 0)
    } else if minutes % 60 == 0 {
        (minutes / 60, 1)
    } else {
        (minutes, 2)
    };
    // (singular, plural) of day, hour, minute.
    let units: [(&str, &str); 3] = match lang.split('-').next().unwrap_or_default() {
        "de" => [("Tag", "Tagen"), ("Stunde", "Stunden"), ("Minute", "Minuten")],
        "fr" => [("jour", "jours"), ("heure", "heures"), ("minute", "minutes")],
        "es" => [("día", "días"), ("hora", "horas"), ("minuto", "minutos")],
        _ => [("day", "days"), ("hour", "hours"), ("minute", "minutes")],
    };
    let (one, many) = units[unit];
    format!("{value} {}", if value == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn a_template_the_engine_panics_on_is_refused_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let template = dir.path().join("broken");
        std::fs::create_dir(&template).unwrap();
        std::fs::write(template.join("subject.txt"), "Hi").unwrap();
        std::fs::write(template.join("body.html"), "{% import \"x\" as 1 %}").unwrap();
        std::fs::write(template.join("body.txt"), "Hi").unwrap();
        let error = super::Templates::load(Some(dir.path()), "en").err().expect("refused");
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
            expires_minutes: 60,
            otp: None,
            locale: "en".into(),
        }
    }

    #[test]
    fn built_in_templates_render_and_escape_html() {
        let templates = Templates::load(None, "en").unwrap();
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
        let templates = Templates::load(None, "en").unwrap();
        for kind in [EmailKind::Login, EmailKind::Signup, EmailKind::Enchanted] {
            let without = templates.render(kind, None, &context("Ann")).unwrap();
            assert!(!without.text.contains("code"), "{kind:?}: {}", without.text);
            assert!(!without.html.contains("code"), "{kind:?}");
            let with = templates
                .render(
                    kind,
                    None,
                    &Context {
                        otp: Some("048213".into()),
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
        let templates = Templates::load(Some(dir.path()), "en").unwrap();
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
        let error = Templates::load(Some(dir.path()), "en")
            .err()
            .expect("a broken template stops loading");
        assert!(error.contains("welcome-v2/body.txt"), "{error}");
    }

    fn in_language(locale: &str, otp: Option<&str>) -> Context {
        Context {
            locale: locale.into(),
            otp: otp.map(str::to_string),
            ..context("Ann")
        }
    }

    #[test]
    fn every_built_in_language_renders_every_kind_with_and_without_a_code() {
        let templates = Templates::load(None, "en").unwrap();
        let mut subjects = HashSet::new();
        for lang in BUILT_IN_LANGUAGES {
            for kind in [EmailKind::Login, EmailKind::Signup, EmailKind::Enchanted] {
                let plain = templates.render(kind, None, &in_language(lang, None)).unwrap();
                assert_eq!(plain.lang, lang);
                assert!(
                    subjects.insert(plain.subject.clone()),
                    "{lang} {kind:?}: a subject of its own"
                );
                assert!(!plain.subject.contains('\n') && plain.subject.contains("Acme"));
                assert!(plain.html.contains(&format!("<html lang=\"{lang}\">")), "{lang}");
                assert!(
                    plain.text.contains(&describe_minutes(lang, 60)),
                    "{lang} {kind:?}: {}",
                    plain.text
                );
                assert!(plain.html.contains(&describe_minutes(lang, 60)), "{lang} {kind:?}");
                assert!(
                    !plain.text.contains("\n\n\n"),
                    "{lang} {kind:?}: no empty code block:\n{}",
                    plain.text
                );
                let link = if kind == EmailKind::Enchanted {
                    "42: https://app.example.com/cb?t=abc"
                } else {
                    "https://app.example.com/cb?token=abc&x=1"
                };
                assert!(plain.text.contains(link), "{lang} {kind:?}");
                for part in [&plain.html, &plain.text] {
                    assert!(!part.contains("123456"));
                }
                let with_code = templates
                    .render(kind, None, &in_language(lang, Some("123456")))
                    .unwrap();
                for part in [&with_code.html, &with_code.text] {
                    assert!(part.contains("123456"), "{lang} {kind:?}: the code is shown");
                }
                if lang != "en" {
                    // No English left in a translation (the product and the address aside).
                    for english in [
                        "Sign in",
                        "expires",
                        "If you did not ask",
                        "Or enter this code",
                        "Welcome",
                    ] {
                        for part in [&with_code.subject, &with_code.html, &with_code.text] {
                            assert!(!part.contains(english), "{lang} {kind:?} says {english:?}:\n{part}");
                        }
                    }
                }
            }
        }
        let german = templates
            .render(EmailKind::Login, None, &in_language("de", Some("123456")))
            .unwrap();
        assert_eq!(german.subject, "Ihr Anmeldelink für Acme");
        assert!(german.text.contains("Hallo Ann, mit diesem Link"), "{}", german.text);
        assert!(german.text.contains("läuft in 1 Stunde ab"), "{}", german.text);
        assert!(
            german.text.contains("Oder geben Sie diesen Code ein: 123456"),
            "{}",
            german.text
        );
        let french = templates
            .render(EmailKind::Signup, None, &in_language("fr", None))
            .unwrap();
        assert_eq!(french.subject, "Confirmez votre adresse e-mail pour Acme");
        assert!(french.text.contains("expire dans 1 heure\u{a0}:"), "{}", french.text);
        let spanish = templates
            .render(EmailKind::Enchanted, None, &in_language("es", None))
            .unwrap();
        assert!(
            spanish.subject.starts_with("Inicia sesión en Acme"),
            "{}",
            spanish.subject
        );
        assert!(spanish.text.contains("caducan en 1 hora"), "{}", spanish.text);
    }

    #[test]
    fn a_language_falls_back_to_its_parent_then_the_default_then_english() {
        let english_default = Templates::load(None, "en").unwrap();
        let lang = |templates: &Templates, locale: &str| {
            templates
                .render(EmailKind::Login, None, &in_language(locale, None))
                .unwrap()
                .lang
        };
        assert_eq!(lang(&english_default, "de-AT"), "de");
        assert_eq!(lang(&english_default, "fr-CA"), "fr");
        assert_eq!(lang(&english_default, "es-419"), "es");
        assert_eq!(lang(&english_default, "xx"), "en");
        assert_eq!(lang(&english_default, "zh-Hant-TW"), "en");
        assert_eq!(lang(&english_default, ""), "en", "an email queued before languages");
        let french_default = Templates::load(None, "fr").unwrap();
        assert_eq!(lang(&french_default, "xx"), "fr");
        assert_eq!(lang(&french_default, ""), "fr");
        assert_eq!(lang(&french_default, "de-CH"), "de");
        let italian_default = Templates::load(None, "it").unwrap();
        assert_eq!(lang(&italian_default, "xx"), "en");
    }

    fn write_template(folder: &Path, subject: &str) {
        std::fs::create_dir_all(folder).unwrap();
        std::fs::write(folder.join("subject.txt"), subject).unwrap();
        std::fs::write(
            folder.join("body.html"),
            "{% extends \"layout.html\" %}{% block content %}<a href=\"{{ link }}\">{{ expires }}</a>{% endblock %}",
        )
        .unwrap();
        std::fs::write(folder.join("body.txt"), "{{ lang }} {{ locale }}: {{ link }}").unwrap();
    }

    #[test]
    fn custom_templates_have_language_folders_with_fallbacks() {
        let dir = tempfile::tempdir().unwrap();
        let welcome = dir.path().join("welcome");
        write_template(&welcome, "Welcome");
        write_template(&welcome.join("de"), "Willkommen");
        write_template(&welcome.join("de-CH"), "Grüezi");
        write_template(&welcome.join("pt-br"), "Bem-vindo");
        std::fs::create_dir(welcome.join("..data")).unwrap();
        let templates = Templates::load(Some(dir.path()), "en").unwrap();
        let render = |locale: &str| {
            templates
                .render(EmailKind::Signup, Some("welcome"), &in_language(locale, None))
                .unwrap()
        };
        assert_eq!(render("de-CH").subject, "Grüezi");
        assert_eq!(render("de-ch-u-co-phonebk").subject, "Grüezi");
        assert_eq!(render("de-AT").subject, "Willkommen");
        assert_eq!(render("de").subject, "Willkommen");
        assert_eq!(render("pt-BR").subject, "Bem-vindo");
        assert_eq!(render("pt-BR").lang, "pt-BR", "the folder's tag in canonical case");
        assert_eq!(render("pt").subject, "Welcome", "a parent does not fall to a child");
        let unknown = render("xx");
        assert_eq!(unknown.subject, "Welcome");
        assert_eq!(unknown.text, "en xx: https://app.example.com/cb?token=abc&x=1");
        let swiss = render("de-CH");
        assert!(swiss.html.contains("<html lang=\"de-CH\">"), "{}", swiss.html);
        assert!(swiss.html.contains(">1 Stunde</a>"), "{}", swiss.html);
        // With a German default, an unknown language gets the German folder.
        let german_default = Templates::load(Some(dir.path()), "de").unwrap();
        let unknown = german_default
            .render(EmailKind::Signup, Some("welcome"), &in_language("xx", None))
            .unwrap();
        assert_eq!(unknown.subject, "Willkommen");
    }

    #[test]
    fn a_bad_language_folder_stops_loading() {
        let dir = tempfile::tempdir().unwrap();
        let welcome = dir.path().join("welcome");
        write_template(&welcome, "Welcome");
        write_template(&welcome.join("german"), "Willkommen");
        let error = Templates::load(Some(dir.path()), "en").err().expect("refused");
        assert!(error.contains("welcome") && error.contains("\"german\""), "{error}");
        std::fs::remove_dir_all(welcome.join("german")).unwrap();
        write_template(&welcome.join("de"), "Willkommen");
        std::fs::remove_file(welcome.join("de/body.txt")).unwrap();
        let error = Templates::load(Some(dir.path()), "en").err().expect("refused");
        assert!(error.contains("welcome/de") && error.contains("body.txt"), "{error}");
        write_template(&welcome.join("de"), "Willkommen");
        write_template(&welcome.join("DE"), "Willkommen");
        if std::fs::read_dir(&welcome).unwrap().count() == 5 {
            // A case-sensitive file system: two folders for one language.
            let error = Templates::load(Some(dir.path()), "en").err().expect("refused");
            assert!(error.contains("two folders"), "{error}");
        }
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(describe_minutes("en", 60), "1 hour");
        assert_eq!(describe_minutes("en", 10_080), "7 days");
        assert_eq!(describe_minutes("en", 45), "45 minutes");
        assert_eq!(describe_minutes("en", 1440), "1 day");
        assert_eq!(describe_minutes("it", 1), "1 minute");
        // German says it after "in", in the dative: "läuft in 7 Tagen ab".
        assert_eq!(describe_minutes("de", 60), "1 Stunde");
        assert_eq!(describe_minutes("de", 10_080), "7 Tagen");
        assert_eq!(describe_minutes("de", 45), "45 Minuten");
        assert_eq!(describe_minutes("de", 1440), "1 Tag");
        assert_eq!(describe_minutes("fr", 120), "2 heures");
        assert_eq!(describe_minutes("fr", 1), "1 minute");
        assert_eq!(describe_minutes("es", 1440), "1 día");
        assert_eq!(describe_minutes("es", 2880), "2 días");
        assert_eq!(describe_minutes("es", 5), "5 minutos");
    }
}
