//! The verify_otp scenario: VerifyOtp of one-time codes read out of LoginOrCreate emails (sent
//! with `include_otp` before the window, unmeasured), closed loop, like `verify` for links.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::Channel;

use crate::api::PasswordlessClient;
use crate::api::pb;
use crate::bench::{Bench, TokenPool, new_email};
use crate::flows::{batch, wait_for};
use crate::load::{CallFuture, Op};
use crate::mail::Mailbox;

/// At most this many emails are prepared: the outbox limit's default is 100,000.
const MAX_EMAILS: usize = 50_000;

impl Bench {
    pub async fn verify_otp(&mut self) {
        let seconds = (self.settings.warmup + self.settings.duration).as_secs_f64();
        let verify_rate = self.row("verify").map_or(2000.0, |row| row.calls_per_s);
        let wanted = ((verify_rate * seconds * 1.2) as usize + 1000).min(MAX_EMAILS);
        eprintln!("  (sending {wanted} emails with a one-time code for verify_otp)");
        let email_ids = Arc::new(Mutex::new(HashSet::new()));
        let queue: Op = {
            let (api, email_ids) = (self.api.clone(), email_ids.clone());
            Arc::new(move |channel: Channel, _n| {
                let (api, email_ids) = (api.clone(), email_ids.clone());
                Some(Box::pin(async move {
                    let mut client = PasswordlessClient::new(channel);
                    let request = pb::LoginOrCreateRequest {
                        email: new_email("otp"),
                        include_otp: Some(true),
                        ..Default::default()
                    };
                    let queued = client.login_or_create(api.request(request)).await?.into_inner();
                    email_ids.lock().expect("email ids lock").insert(queued.email_id);
                    Ok(())
                }) as CallFuture)
            })
        };
        batch(
            self,
            self.channels(),
            self.settings.per_connection,
            wanted as u64,
            queue,
        )
        .await;
        let email_ids = email_ids.lock().expect("email ids lock").clone();
        let mut mailbox = Mailbox::default();
        let mut codes = Vec::with_capacity(email_ids.len());
        let mail_dir = self.settings.mail_dir.clone();
        let all_read = wait_for(Duration::from_secs(600), Duration::from_millis(200), || {
            codes.extend(mailbox.otp_codes(&mail_dir, &email_ids));
            codes.len() >= email_ids.len()
        })
        .await;
        if !all_read {
            self.problems.push(format!(
                "verify_otp: read {} of {} codes from the mail folder",
                codes.len(),
                email_ids.len()
            ));
        }
        let pool = Arc::new(TokenPool::default());
        for (email_id, code) in codes {
            pool.push(format!("{email_id} {code}"));
        }
        let op: Op = {
            let api = self.api.clone();
            Arc::new(move |channel: Channel, _n| {
                let entry = pool.take()?;
                let api = api.clone();
                Some(Box::pin(async move {
                    let (email_id, otp) = entry.split_once(' ').expect("email id and code");
                    let mut client = PasswordlessClient::new(channel);
                    let request = pb::VerifyOtpRequest {
                        email_id: email_id.into(),
                        otp: otp.into(),
                        ..Default::default()
                    };
                    client.verify_otp(api.request(request)).await.map(|_| ())
                }) as CallFuture)
            })
        };
        let mut row = self.closed_loop("verify_otp", op).await;
        row.note = format!("VerifyOtp of codes from {} LoginOrCreate emails", email_ids.len());
        self.push(row);
    }
}
