//! The mail worker's own runtime: one thread beside the API's, so that when calls saturate the
//! API's threads the worker still gets a share of the machine from the operating system's
//! scheduler instead of waiting its turn among hundreds of call tasks (under load on one shared
//! runtime it delivered 35–650 emails/s while the API accepted thousands; bench/RESULTS.md).

use tokio::runtime::{Builder, Handle, Runtime};

pub struct MailRuntime {
    runtime: Option<Runtime>,
}

impl MailRuntime {
    pub fn new() -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("latchkey-mail")
            .enable_all()
            .build()?;
        Ok(Self { runtime: Some(runtime) })
    }

    pub fn handle(&self) -> &Handle {
        self.runtime.as_ref().expect("present until dropped").handle()
    }
}

impl Drop for MailRuntime {
    /// Does not wait: by the time a server is dropped its worker has stopped (or overran the
    /// shutdown grace period), and a runtime may not block when it is dropped inside another.
    /// A database connection the worker opened ends here with it.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
