//! Emails in the user's language, end to end over gRPC with the development mail path (`.eml`
//! files): the request's locale wins, then the user's, then `mail.default_locale`; a language
//! without a template falls back (`de-AT` to German, `xx` to the default); custom templates per
//! language fall back `de-CH` → `de`; the user's locale is kept, set and removed through the
//! Users API; and a German email over a real SMTP conversation.

mod common;

use common::mail::*;
use common::mime::header;
use common::*;
use pb::get_user_request::User as Lookup;

impl TestApp {
    async fn queue(&self, request: pb::LoginOrCreateRequest) -> pb::LoginOrCreateResponse {
        self.passwordless()
            .login_or_create(request)
            .await
            .expect("queued")
            .into_inner()
    }

    /// The message of `email_id` once it is SENT.
    async fn message(&self, email_id: &str) -> String {
        sent(self.addr, email_id).await;
        let dir = self.dir.path().join("data/mail");
        eml_files(&dir)
            .into_iter()
            .find(|m| header(m, "X-Latchkey-Email-Id").as_deref() == Some(email_id))
            .expect("the message is in the mail folder")
    }

    async fn user_locale(&self, user_id: &str) -> String {
        self.users()
            .get_user(pb::GetUserRequest {
                user: Some(Lookup::UserId(user_id.into())),
            })
            .await
            .unwrap()
            .into_inner()
            .user
            .unwrap()
            .locale
    }
}

fn request(email: &str, locale: &str) -> pb::LoginOrCreateRequest {
    pb::LoginOrCreateRequest {
        email: email.into(),
        locale: locale.into(),
        ..Default::default()
    }
}

fn subject(message: &str) -> String {
    decoded_header(message, "Subject").expect("a subject")
}

#[tokio::test]
async fn a_sign_up_in_de_at_is_german_and_the_new_user_keeps_the_locale() {
    let app = TestApp::spawn().await;
    let queued = app.queue(request("anna@example.at", "de-at")).await;
    assert!(queued.user_created);
    let message = app.message(&queued.email_id).await;
    assert_eq!(subject(&message), "Bestätigen Sie Ihre E-Mail-Adresse für latchkey");
    assert_eq!(header(&message, "Content-Language").as_deref(), Some("de"));
    let text = part(&message, "text/plain");
    assert!(text.contains("läuft in 7 Tagen ab"), "{text}");
    let html = part(&message, "text/html");
    assert!(html.contains("<html lang=\"de\">"), "{html}");
    assert!(html.contains("E-Mail-Adresse bestätigen"), "{html}");
    // The link in the German email signs in like any other.
    let token = token_in(&text, "token");
    app.verify(&token, "").await.expect("the link verifies");
    assert_eq!(app.user_locale(&queued.user_id).await, "de-AT", "in canonical case");

    // The next email, a login link with no locale in the request, is German too.
    let login = app.queue(request("anna@example.at", "")).await;
    let message = app.message(&login.email_id).await;
    assert_eq!(subject(&message), "Ihr Anmeldelink für latchkey");
    assert!(part(&message, "text/plain").contains("läuft in 1 Stunde ab"));
}

#[tokio::test]
async fn the_users_locale_is_used_when_the_request_names_none_and_the_request_beats_it() {
    let app = TestApp::spawn().await;
    let (user, _) = app.signed_in("claire@example.fr").await;
    assert_eq!(user.locale, "", "a user created without a language has none");
    let updated = app
        .update_user(
            &user.user_id,
            pb::User {
                locale: "fr".into(),
                ..Default::default()
            },
            &["locale"],
        )
        .await
        .unwrap();
    assert_eq!(updated.locale, "fr");

    let french = app.queue(request("claire@example.fr", "")).await;
    let message = app.message(&french.email_id).await;
    assert_eq!(subject(&message), "Votre lien de connexion à latchkey");
    assert_eq!(header(&message, "Content-Language").as_deref(), Some("fr"));
    assert!(part(&message, "text/plain").contains("expire dans 1 heure\u{a0}:"));

    let spanish = app.queue(request("claire@example.fr", "es-MX")).await;
    let message = app.message(&spanish.email_id).await;
    assert_eq!(subject(&message), "Tu enlace de acceso a latchkey");
    assert!(part(&message, "text/plain").contains("caduca en 1 hora"));
    assert_eq!(
        app.user_locale(&user.user_id).await,
        "fr",
        "a request's language is for that email only"
    );

    // Removed, the user's emails are in the default language again.
    let cleared = app
        .update_user(&user.user_id, pb::User::default(), &["locale"])
        .await
        .unwrap();
    assert_eq!(cleared.locale, "");
    let english = app.queue(request("claire@example.fr", "")).await;
    let message = app.message(&english.email_id).await;
    assert_eq!(subject(&message), "Your sign-in link for latchkey");
    assert_eq!(header(&message, "Content-Language").as_deref(), Some("en"));
}

#[tokio::test]
async fn an_unknown_language_falls_back_to_the_default_and_never_fails() {
    let app = TestApp::spawn().await;
    let queued = app.queue(request("someone@example.com", "xx")).await;
    let message = app.message(&queued.email_id).await;
    assert_eq!(subject(&message), "Confirm your email for latchkey");
    assert_eq!(header(&message, "Content-Language").as_deref(), Some("en"));
    assert_eq!(app.user_locale(&queued.user_id).await, "xx", "kept as asked");

    // With Spanish as the default, the same language falls back to Spanish.
    let app = TestApp::spawn_with(|config| config.mail.default_locale = "es".into()).await;
    let queued = app.queue(request("someone@example.com", "xx")).await;
    let message = app.message(&queued.email_id).await;
    assert_eq!(subject(&message), "Confirma tu correo electrónico para latchkey");
    let queued = app.queue(request("other@example.com", "")).await;
    let message = app.message(&queued.email_id).await;
    assert_eq!(subject(&message), "Confirma tu correo electrónico para latchkey");
}

#[tokio::test]
async fn an_enchanted_email_is_in_the_requested_language() {
    let app = TestApp::spawn().await;
    let sent = app
        .passwordless()
        .send_enchanted_link(pb::SendEnchantedLinkRequest {
            login_id: "luc@example.fr".into(),
            locale: "fr-BE".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let message = app.message(&sent.email_id).await;
    assert_eq!(
        subject(&message),
        "Connexion à latchkey\u{a0}: choisissez le nombre affiché sur votre écran"
    );
    let links = numbered_links(&message);
    assert!(links.iter().any(|(number, _)| *number == sent.link_id));
    assert!(part(&message, "text/plain").contains("Les liens expirent dans 10 minutes."));
    assert_eq!(app.user_locale(&sent.user_id).await, "fr-BE");
}

#[tokio::test]
async fn a_custom_template_falls_back_from_de_ch_to_de_then_to_its_own_folder() {
    let templates = tempfile::tempdir().unwrap();
    let welcome = templates.path().join("welcome");
    for (folder, subject) in [
        (welcome.clone(), "Welcome to {{ product }}"),
        (welcome.join("de"), "Willkommen bei {{ product }}"),
    ] {
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("subject.txt"), subject).unwrap();
        std::fs::write(
            folder.join("body.html"),
            "{% extends \"layout.html\" %}{% block content %}<a href=\"{{ link }}\">{{ expires }}</a>{% endblock %}",
        )
        .unwrap();
        std::fs::write(folder.join("body.txt"), "{{ lang }}/{{ locale }}: {{ link }}").unwrap();
    }
    let dir = templates.path().to_path_buf();
    let app = TestApp::spawn_with(move |config| config.mail.templates_dir = Some(dir)).await;
    let custom = |email: &str, locale: &str| pb::LoginOrCreateRequest {
        signup_template_id: "welcome".into(),
        ..request(email, locale)
    };

    let swiss = app.queue(custom("ueli@example.ch", "de-CH")).await;
    let message = app.message(&swiss.email_id).await;
    assert_eq!(subject(&message), "Willkommen bei latchkey");
    assert_eq!(header(&message, "Content-Language").as_deref(), Some("de"));
    assert!(part(&message, "text/plain").starts_with("de/de-CH: http://localhost:3000/auth/callback?token="));
    assert!(part(&message, "text/html").contains(">7 Tagen</a>"));

    let other = app.queue(custom("pia@example.it", "it")).await;
    let message = app.message(&other.email_id).await;
    assert_eq!(subject(&message), "Welcome to latchkey");
    assert!(part(&message, "text/plain").starts_with("en/it: "));
}

#[tokio::test]
async fn a_bad_language_folder_stops_start_up_with_a_message() {
    let templates = tempfile::tempdir().unwrap();
    let welcome = templates.path().join("welcome");
    for folder in [welcome.clone(), welcome.join("deutsch")] {
        std::fs::create_dir_all(&folder).unwrap();
        for part in ["subject.txt", "body.html", "body.txt"] {
            std::fs::write(folder.join(part), "{{ link }}").unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(&dir);
    config.mail.templates_dir = Some(templates.path().to_path_buf());
    let validated = config.validate(dir.path()).expect("the config itself is valid");
    let clock = latchkey::domain::clock::ManualClock::starting_now();
    let error = match latchkey::app::start(validated, std::sync::Arc::new(clock)).await {
        Ok(_) => panic!("a template folder that is not a language stops start-up"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("mail.templates_dir") && error.contains("\"deutsch\""),
        "{error}"
    );
}

/// Over a real SMTP conversation (aiosmtpd on loopback) the German subject arrives as RFC 2047
/// encoded words and the bodies in a transfer encoding; decoded, they are the German email.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_german_email_crosses_smtp_intact() {
    let maildir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = SmtpServer::start(maildir.path(), port, &SmtpOptions::default());
    let app = TestApp::spawn_with(|config| {
        config.mail.transport = latchkey::config::MailTransport::Smtp;
        config.mail.smtp.host = "localhost".into();
        config.mail.smtp.port = Some(port);
        config.mail.smtp.tls = latchkey::config::SmtpTls::None;
    })
    .await;
    let queued = app.queue(request("joerg@example.de", "de-AT")).await;
    sent(app.addr, &queued.email_id).await;
    let messages = server.messages();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(subject(message), "Bestätigen Sie Ihre E-Mail-Adresse für latchkey");
    assert_eq!(header(message, "Content-Language").as_deref(), Some("de"));
    // Not ASCII: over SMTP neither part goes as it is.
    assert_eq!(
        message.matches("Content-Transfer-Encoding: quoted-printable").count()
            + message.matches("Content-Transfer-Encoding: base64").count(),
        2,
        "{message}"
    );
    let text = part(message, "text/plain");
    assert!(text.contains("Einrichtung Ihres Kontos abzuschließen"), "{text}");
    assert!(part(message, "text/html").contains("E-Mail-Adresse bestätigen"));
    app.verify(&token_in(&text, "token"), "")
        .await
        .expect("the link verifies");
}
