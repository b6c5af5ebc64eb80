//! What `up` and `down` do: the file's VMs compared with the ones that exist.

use super::file::Deployment;

/// A VM that exists now with this deployment's label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    /// Its name within the deployment.
    pub name: String,
    /// The [`VmDef::fingerprint`](super::file::VmDef::fingerprint) it was started from,
    /// if recorded.
    pub fingerprint: Option<String>,
    /// Whether its domain is running.
    pub running: bool,
}

/// One step of `up`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create and start the VM (it does not exist, or exists unchanged but stopped).
    Start(String),
    /// Remove the VM and start it from the new definition.
    Replace(String),
    /// Leave the VM running as it is.
    Keep(String),
    /// Remove a VM the file no longer names.
    Remove(String),
}

/// The steps bringing `current` in line with `desired`: first the removals of VMs the
/// file no longer names (in reverse of their order in `current`), then one step per VM of
/// the file, in start order. A VM with no recorded fingerprint counts as changed.
pub fn plan_up(desired: &Deployment, current: &[Existing]) -> Vec<Action> {
    let wanted = |name: &str| desired.vms.iter().any(|vm| vm.name == name);
    let mut actions: Vec<Action> = current
        .iter()
        .rev()
        .filter(|e| !wanted(&e.name))
        .map(|e| Action::Remove(e.name.clone()))
        .collect();
    for vm in &desired.vms {
        let name = vm.name.clone();
        let action = match current.iter().find(|e| e.name == vm.name) {
            None => Action::Start(name),
            Some(e) if e.fingerprint.as_deref() != Some(vm.fingerprint().as_str()) => {
                Action::Replace(name)
            }
            Some(e) if e.running => Action::Keep(name),
            Some(_) => Action::Start(name),
        };
        actions.push(action);
    }
    actions
}

/// The VMs `down` stops and removes, in reverse start order (dependents first).
pub fn plan_down(desired: &Deployment) -> Vec<String> {
    desired.vms.iter().rev().map(|vm| vm.name.clone()).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const FILE: &str = r#"
[vm.web]
image = "demo"
depends_on = ["db"]
[vm.db]
image = "demo"
[vm.worker]
image = "demo"
"#;

    fn deployment(text: &str) -> Deployment {
        Deployment::parse(text, Path::new("shop.toml")).expect("the test deployment parses")
    }

    fn existing(d: &Deployment, name: &str, running: bool) -> Existing {
        let vm = d
            .vms
            .iter()
            .find(|v| v.name == name)
            .expect("a VM of the file");
        Existing {
            name: name.into(),
            fingerprint: Some(vm.fingerprint()),
            running,
        }
    }

    fn start(n: &str) -> Action {
        Action::Start(n.into())
    }

    #[test]
    fn first_up_starts_everything_in_start_order() {
        let d = deployment(FILE);
        assert_eq!(
            plan_up(&d, &[]),
            [start("db"), start("web"), start("worker")]
        );
    }

    #[test]
    fn second_up_keeps_running_vms_and_restarts_stopped_ones() {
        let d = deployment(FILE);
        let current = [
            existing(&d, "db", true),
            existing(&d, "web", false),
            existing(&d, "worker", true),
        ];
        assert_eq!(
            plan_up(&d, &current),
            [
                Action::Keep("db".into()),
                start("web"),
                Action::Keep("worker".into())
            ]
        );
    }

    #[test]
    fn changed_or_unknown_fingerprints_are_replaced() {
        let old = deployment(FILE);
        let new = deployment(&FILE.replace(
            "[vm.db]\nimage = \"demo\"",
            "[vm.db]\nimage = \"demo\"\nmemory = \"256m\"",
        ));
        let mut current = vec![existing(&old, "db", true), existing(&old, "web", false)];
        current.push(Existing {
            name: "worker".into(),
            fingerprint: None,
            running: true,
        });
        assert_eq!(
            plan_up(&new, &current),
            [
                Action::Replace("db".into()),
                start("web"),
                Action::Replace("worker".into())
            ]
        );
    }

    #[test]
    fn vms_gone_from_the_file_are_removed_first_in_reverse() {
        let d = deployment(FILE);
        let ghost = |name: &str| Existing {
            name: name.into(),
            fingerprint: Some("x".into()),
            running: true,
        };
        let current = [ghost("old1"), existing(&d, "db", true), ghost("old2")];
        assert_eq!(
            plan_up(&d, &current),
            [
                Action::Remove("old2".into()),
                Action::Remove("old1".into()),
                Action::Keep("db".into()),
                start("web"),
                start("worker"),
            ]
        );
    }

    #[test]
    fn down_is_reverse_start_order() {
        assert_eq!(plan_down(&deployment(FILE)), ["worker", "web", "db"]);
    }
}
