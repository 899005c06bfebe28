//! `cairn`: the command-line client. Everything it prints lives in
//! [`cli`]; the library (`cairn_client`) holds the engines.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
