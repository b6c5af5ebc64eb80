//! Writes the demo image (`demo:latest`, a `docker save` tarball) to the path given,
//! for `scripts/demo` and the benchmarks; with `--volume`, `demovol:latest` instead.

fn main() -> std::process::ExitCode {
    let mut args: Vec<_> = std::env::args_os().skip(1).collect();
    let volume = args.first().is_some_and(|a| a == "--volume");
    if volume {
        args.remove(0);
    }
    let Some(out) = args.first() else {
        eprintln!("usage: demo-image [--volume] OUT.tar");
        return std::process::ExitCode::from(2);
    };
    let out = std::path::Path::new(out);
    let written = if volume {
        hyperxl_e2e::demo::write_volume_image(out)
    } else {
        hyperxl_e2e::demo::write_docker_save(out)
    };
    match written {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo-image: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
