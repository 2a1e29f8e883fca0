// sled allocates on every read and write; glibc's malloc took a fifth of the server's CPU under
// load (bench/RESULTS.md), mimalloc about half of that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    latchkey::cli::run()
}
