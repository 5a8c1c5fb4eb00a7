//! The `sqlgate` binary.

use clap::Parser;
use sqlgate::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_env("SQLGATE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    match cli.log_format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
    sqlgate::tls::init_crypto();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Room for the parser's recursion on small statements parsed inline
        // (see sql::postgres::INLINE_PARSE_MAX).
        .thread_stack_size(16 << 20)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sqlgate: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(sqlgate::cli::run(cli));
    std::process::exit(code);
}
