fn main() -> std::process::ExitCode {
    cosell::cli::main()
}
