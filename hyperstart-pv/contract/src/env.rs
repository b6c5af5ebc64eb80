//! Environment merging with Docker's rules.

/// Docker's default `PATH` for Linux containers.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// Sets or replaces entries in `env`, in order; an entry without `=` removes that name
/// (Docker's `ReplaceOrAppendEnvValues`).
pub fn replace_or_append(env: &mut Vec<String>, overrides: &[String]) {
    for o in overrides {
        let k = key(o);
        let pos = env.iter().position(|e| key(e) == k);
        match (o.contains('='), pos) {
            (true, Some(i)) => env[i] = o.clone(),
            (true, None) => env.push(o.clone()),
            (false, Some(i)) => {
                env.remove(i);
            }
            (false, None) => {}
        }
    }
}

/// The container environment as Docker builds it: `PATH` default, `HOSTNAME`, `TERM`
/// when a terminal is used, then the image's env, then the CLI's env (later wins).
pub fn merge(
    hostname: &str,
    terminal: bool,
    image_env: &[String],
    cli_env: &[String],
) -> Vec<String> {
    let mut env = vec![format!("PATH={DEFAULT_PATH}")];
    if !hostname.is_empty() {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if terminal {
        env.push("TERM=xterm".to_string());
    }
    replace_or_append(&mut env, image_env);
    replace_or_append(&mut env, cli_env);
    env
}

/// Adds `HOME=<home>` when the env has no `HOME` (as runc does from the user's entry).
pub fn with_home(mut env: Vec<String>, home: &str) -> Vec<String> {
    if !env.iter().any(|e| key(e) == "HOME") {
        env.push(format!("HOME={home}"));
    }
    env
}

/// The value of `name` in an env list.
pub fn get<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
    env.iter().rev().find_map(|e| {
        e.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(x: &[&str]) -> Vec<String> {
        x.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn docker_order_later_wins() {
        let env = merge(
            "web1",
            false,
            &v(&["PATH=/img/bin", "A=image", "B=image"]),
            &v(&["B=cli", "C=cli"]),
        );
        assert_eq!(
            env,
            v(&[
                "PATH=/img/bin",
                "HOSTNAME=web1",
                "A=image",
                "B=cli",
                "C=cli"
            ])
        );
    }

    #[test]
    fn default_path_and_term() {
        let env = merge("h", true, &[], &[]);
        assert_eq!(
            env,
            v(&[&format!("PATH={DEFAULT_PATH}"), "HOSTNAME=h", "TERM=xterm"])
        );
    }

    #[test]
    fn bare_name_unsets() {
        let env = merge("", false, &v(&["A=1"]), &v(&["A"]));
        assert_eq!(get(&env, "A"), None);
    }

    #[test]
    fn home_added_only_when_missing() {
        assert_eq!(get(&with_home(v(&["X=1"]), "/root"), "HOME"), Some("/root"));
        assert_eq!(
            get(&with_home(v(&["HOME=/h"]), "/root"), "HOME"),
            Some("/h")
        );
    }
}
