//! From an image's config and `run`'s flags to the contract's [`Spec`], validated before
//! any domain exists.

use hyperxl_contract::{env, Spec};
use oci_spec::image::ImageConfiguration;

/// What `run` says about the app.
#[derive(Debug, Default, Clone)]
pub struct RunFlags {
    /// `-e` and `--env-file` entries, already resolved to NAME=VALUE.
    pub env: Vec<String>,
    /// `-w`.
    pub workdir: Option<String>,
    /// `-u`.
    pub user: Option<String>,
    /// `--entrypoint`.
    pub entrypoint: Option<String>,
    /// CMD... after the image.
    pub command: Vec<String>,
    /// The guest's hostname.
    pub hostname: String,
    /// `run -i`: the app's stdin is fed from dom0.
    pub open_stdin: bool,
    /// `run -t`: the app runs on a terminal in the guest.
    pub terminal: bool,
    /// `run -t` without `-d`: this process attaches to that terminal as the app starts.
    pub attached: bool,
}

/// Errors building the spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecBuildError {
    /// Neither the flags nor the image name a command.
    #[error("no command: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    /// The spec did not validate.
    #[error("invalid spec: {0}")]
    Invalid(#[from] hyperxl_contract::SpecError),
}

/// Docker's rule: `--entrypoint` replaces the image's entrypoint and drops its Cmd;
/// CMD given on the command line replaces the image's Cmd.
pub fn build(config: &ImageConfiguration, flags: &RunFlags) -> Result<Spec, SpecBuildError> {
    let image = config.config().as_ref();
    let image_entry: Vec<String> = image
        .and_then(|c| c.entrypoint().clone())
        .unwrap_or_default();
    let image_cmd: Vec<String> = image.and_then(|c| c.cmd().clone()).unwrap_or_default();
    let mut args = match &flags.entrypoint {
        Some(e) if e.is_empty() => Vec::new(),
        Some(e) => vec![e.clone()],
        None => image_entry,
    };
    if !flags.command.is_empty() {
        args.extend(flags.command.iter().cloned());
    } else if flags.entrypoint.is_none() {
        args.extend(image_cmd);
    }
    if args.is_empty() {
        return Err(SpecBuildError::NoCommand);
    }
    let image_env: Vec<String> = image.and_then(|c| c.env().clone()).unwrap_or_default();
    let mut spec = Spec::new(args);
    spec.env = env::merge(&flags.hostname, false, &image_env, &flags.env);
    spec.hostname = flags.hostname.clone();
    let image_workdir = image
        .and_then(|c| c.working_dir().clone())
        .filter(|w| !w.is_empty());
    if let Some(w) = flags.workdir.clone().or(image_workdir) {
        spec.working_dir = w;
    }
    let image_user = image.and_then(|c| c.user().clone());
    spec.user = flags.user.clone().or(image_user).unwrap_or_default();
    spec.open_stdin = flags.open_stdin;
    spec.terminal = flags.terminal;
    spec.attached = flags.terminal && flags.attached;
    spec.validate()?;
    Ok(spec)
}

/// `NAME` alone takes the value from hyperxl's own environment, as Docker does; unset
/// names are dropped.
pub fn resolve_env(entries: &[String]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| {
            if e.contains('=') {
                Some(e.clone())
            } else {
                std::env::var(e).ok().map(|v| format!("{e}={v}"))
            }
        })
        .collect()
}

/// Lines of an `--env-file`: blank lines and `#` comments skipped.
pub fn parse_env_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> ImageConfiguration {
        serde_json::from_str(json).unwrap()
    }

    const IMG: &str = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"history":[],
        "config":{"Entrypoint":["/bin/ep"],"Cmd":["a","b"],"Env":["PATH=/bin","X=1"],
                  "WorkingDir":"/srv","User":"app"}}"#;

    #[test]
    fn image_config_is_the_default() {
        let s = build(&config(IMG), &RunFlags::default()).unwrap();
        assert_eq!(s.args, ["/bin/ep", "a", "b"]);
        assert_eq!(s.working_dir, "/srv");
        assert_eq!(s.user, "app");
        assert!(s.env.contains(&"X=1".to_string()));
        assert!(s.env.contains(&"PATH=/bin".to_string()));
    }

    #[test]
    fn flags_override_as_docker_does() {
        let flags = RunFlags {
            env: vec!["X=2".into()],
            workdir: Some("/tmp".into()),
            user: Some("1000:1000".into()),
            command: vec!["c".into()],
            ..RunFlags::default()
        };
        let s = build(&config(IMG), &flags).unwrap();
        assert_eq!(s.args, ["/bin/ep", "c"]);
        assert_eq!(s.working_dir, "/tmp");
        assert_eq!(s.user, "1000:1000");
        assert!(s.env.contains(&"X=2".to_string()) && !s.env.contains(&"X=1".to_string()));
        // --entrypoint drops the image's Cmd.
        let flags = RunFlags {
            entrypoint: Some("/bin/sh".into()),
            ..RunFlags::default()
        };
        assert_eq!(build(&config(IMG), &flags).unwrap().args, ["/bin/sh"]);
    }

    #[test]
    fn no_command_is_an_error() {
        let c = config(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"history":[]}"#,
        );
        assert!(matches!(
            build(&c, &RunFlags::default()),
            Err(SpecBuildError::NoCommand)
        ));
        let s = build(
            &c,
            &RunFlags {
                command: vec!["true".into()],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.working_dir, "/");
    }

    #[test]
    fn env_files_skip_comments() {
        assert_eq!(parse_env_file("# c\nA=1\n\n B=2 \n"), ["A=1", "B=2"]);
    }
}
