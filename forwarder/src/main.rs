//! `sidecred-forwarder`: the command line. Everything, its map included, is in the library (`lib.rs`).

fn main() -> std::process::ExitCode {
    sidecred_forwarder::main()
}
