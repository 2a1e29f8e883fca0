//! Email templates: the built-in ones rendered with arbitrary context values, and custom ones
//! loaded from arbitrary text. Never panics; a `<script>` in any value never reaches a built-in
//! template's HTML part unescaped.
#![no_main]

use std::sync::LazyLock;

use latchkey::domain::model::EmailKind;
use latchkey::mail::templates::{Context, NumberedLink, Templates, describe_minutes};
use libfuzzer_sys::fuzz_target;

static BUILT_IN: LazyLock<Templates> = LazyLock::new(|| Templates::load(None).unwrap());
/// The custom templates' folder: one `fuzzed/` template in it, rewritten for each input.
static CUSTOM_DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().unwrap());

/// Known panic, not latchkey's: minijinja 2.24.0 parses `{% import "x" as <any expression> %}` and
/// its code generator then hits `unreachable!()` (compiler/codegen.rs:662) for a target that is not
/// a name, e.g. `{% import "x" as 1 %}` or `as a.b ~ c` (fuzz/artifacts/template_render/).
/// `Templates::load` catches it and refuses the template, but libFuzzer's panic hook aborts on any
/// panic, caught or not, so custom sources with `import` are skipped; `LATCHKEY_FUZZ_KNOWN_BUGS=1`
/// tries them too (to reproduce, or to check a minijinja fix).
static SKIP_KNOWN_BUGS: LazyLock<bool> =
    LazyLock::new(|| std::env::var_os("LATCHKEY_FUZZ_KNOWN_BUGS").is_none_or(|value| value != "1"));

const SCRIPT: &str = "<script>alert(1)</script>";

/// The input is text, so seeds can be written by hand: up to four parts separated by U+001E,
/// `values` then, if present, a custom template's `subject.txt`, `body.html` and `body.txt`.
/// `values` holds fields separated by U+001F: the kind (`login`, `signup`, `enchanted`; anything
/// else picks by length), which value gets `SCRIPT` appended (a digit), product, first name, last
/// name, email, link, the links' lifetime in minutes, then numbered links as `number url` fields.
struct Input<'a> {
    kind: EmailKind,
    inject: usize,
    product: &'a str,
    first_name: &'a str,
    last_name: &'a str,
    email: &'a str,
    link: &'a str,
    expires_minutes: i64,
    links: Vec<(&'a str, &'a str)>,
    custom: Option<[&'a str; 3]>,
}

fn parse(text: &str) -> Input<'_> {
    let mut parts = text.split('\u{1e}');
    let mut fields = parts.next().unwrap_or_default().split('\u{1f}');
    let mut next = || fields.next().unwrap_or_default();
    let kind = match next() {
        "login" => EmailKind::Login,
        "signup" => EmailKind::Signup,
        "enchanted" => EmailKind::Enchanted,
        other => [EmailKind::Login, EmailKind::Signup, EmailKind::Enchanted][other.len() % 3],
    };
    let inject = next()
        .bytes()
        .fold(0usize, |n, b| n.wrapping_mul(10).wrapping_add(usize::from(b)));
    let (product, first_name, last_name, email, link) = (next(), next(), next(), next(), next());
    let expires_minutes = next().trim().parse().unwrap_or(60);
    let links = std::iter::from_fn(|| fields.next())
        .take(8)
        .map(|field| field.split_once(' ').unwrap_or((field, "")))
        .collect();
    let custom = match (parts.next(), parts.next(), parts.next()) {
        (Some(subject), Some(html), Some(text)) => Some([subject, html, text]),
        _ => None,
    };
    Input {
        kind,
        inject,
        product,
        first_name,
        last_name,
        email,
        link,
        expires_minutes,
        links,
        custom,
    }
}

fn context(input: &Input) -> Context {
    let mut context = Context {
        product: input.product.into(),
        first_name: input.first_name.into(),
        last_name: input.last_name.into(),
        email: input.email.into(),
        link: input.link.into(),
        links: input
            .links
            .iter()
            .map(|(number, url)| NumberedLink {
                number: (*number).into(),
                url: (*url).into(),
            })
            .collect(),
        expires: describe_minutes(input.expires_minutes),
        otp: String::new(),
    };
    let target = match input.inject % 7 {
        0 => &mut context.product,
        1 => &mut context.first_name,
        2 => &mut context.last_name,
        3 => &mut context.email,
        4 => &mut context.link,
        5 => &mut context.expires,
        _ => match context.links.first_mut() {
            Some(link) => &mut link.url,
            None => &mut context.link,
        },
    };
    target.push_str(SCRIPT);
    context
}

fuzz_target!(|text: &str| {
    let input = parse(text);
    let context = context(&input);
    let kind = input.kind;
    let rendered = BUILT_IN
        .render(kind, None, &context)
        .unwrap_or_else(|error| panic!("built-in {kind:?} does not render: {error}"));
    assert!(
        !rendered.html.to_ascii_lowercase().contains("<script"),
        "a value's <script> reached the HTML of {kind:?} unescaped: {context:?}"
    );
    assert!(
        !rendered.subject.contains('\n'),
        "the subject is one line: {:?}",
        rendered.subject
    );
    assert!(BUILT_IN.render(kind, Some("missing"), &context).is_err());

    let Some([subject, html, text]) = input.custom else {
        return;
    };
    if *SKIP_KNOWN_BUGS && [subject, html, text].iter().any(|source| source.contains("import")) {
        return;
    }
    let folder = CUSTOM_DIR.path().join("fuzzed");
    std::fs::create_dir_all(&folder).unwrap();
    for (part, source) in [("subject.txt", subject), ("body.html", html), ("body.txt", text)] {
        std::fs::write(folder.join(part), source).unwrap();
    }
    if let Ok(templates) = Templates::load(Some(CUSTOM_DIR.path())) {
        let _ = templates.render(kind, Some("fuzzed"), &context);
    }
});
