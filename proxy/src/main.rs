fn main() -> std::process::ExitCode {
    nexus_proxy::main()
}
