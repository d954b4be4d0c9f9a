//! `orchestrator`: the CLI an agent uses inside its worker container to act on
//! the platform (see `skills/*.md` for the documented syntax and exit codes).
//! All of it is in the library; see `lib.rs`.

fn main() {
    std::process::exit(orchestrator::run(std::env::args_os().collect()));
}
