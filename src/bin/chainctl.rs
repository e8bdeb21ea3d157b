//! chainctl: drives chaind over its Unix socket. Parses flags, runs the command, sets the exit
//! code.

use clap::Parser;

fn main() {
    let args = chain::cli::Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chainctl: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    std::process::exit(rt.block_on(chain::cli::run(args)));
}
