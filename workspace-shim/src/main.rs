fn main() -> std::process::ExitCode {
    nexus_shim::main()
}
