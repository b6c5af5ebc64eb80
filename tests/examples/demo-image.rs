//! Writes the demo image (`demo:latest`, a `docker save` tarball) to the path given,
//! for `scripts/demo` and the benchmarks.

fn main() -> std::process::ExitCode {
    let Some(out) = std::env::args_os().nth(1) else {
        eprintln!("usage: demo-image OUT.tar");
        return std::process::ExitCode::from(2);
    };
    match hyperxl_e2e::demo::write_docker_save(std::path::Path::new(&out)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-image: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
