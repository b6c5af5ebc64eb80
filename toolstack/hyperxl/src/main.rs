//! `hyperxl`: run container images as Xen virtual machines (see the library crate).

fn main() -> std::process::ExitCode {
    hyperxl::main()
}
