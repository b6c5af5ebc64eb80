//! Start order: a topological sort of `depends_on` that keeps file order among VMs
//! free to start at the same point, and names a cycle when there is one.

/// Indices into the VM list, in an order where each VM comes after the VMs it depends on;
/// among the VMs that could come next, the earliest in the file does.
///
/// `deps[i]` lists the indices VM `i` depends on; every index must be in range. On a
/// cycle, returns it as indices, starting at its VM earliest in the file, the first VM
/// repeated at the end (`[a, b, a]`).
pub(super) fn start_order(deps: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let n = deps.len();
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    while order.len() < n {
        let next = (0..n).find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]));
        match next {
            Some(i) => {
                placed[i] = true;
                order.push(i);
            }
            None => return Err(find_cycle(deps, &placed)),
        }
    }
    Ok(order)
}

/// Every VM not yet placed waits for another VM not yet placed, so following those waits
/// from any of them must come back to a VM already seen: that loop is a cycle.
fn find_cycle(deps: &[Vec<usize>], placed: &[bool]) -> Vec<usize> {
    let unplaced = |i: &usize| !placed[*i];
    let mut path: Vec<usize> = Vec::new();
    let mut current = (0..deps.len()).find(unplaced);
    while let Some(i) = current {
        if let Some(pos) = path.iter().position(|&p| p == i) {
            let mut cycle = path.split_off(pos);
            // Start at the VM earliest in the file, so the message does not depend on
            // where the walk came in.
            if let Some(min_pos) = cycle
                .iter()
                .enumerate()
                .min_by_key(|(_, &v)| v)
                .map(|(p, _)| p)
            {
                cycle.rotate_left(min_pos);
            }
            if let Some(&first) = cycle.first() {
                cycle.push(first);
            }
            return cycle;
        }
        path.push(i);
        current = deps[i].iter().copied().find(unplaced);
    }
    // Not reached when called as above: every unplaced VM has an unplaced dependency.
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_dependencies_keeps_file_order() {
        assert_eq!(start_order(&[vec![], vec![], vec![]]), Ok(vec![0, 1, 2]));
        assert_eq!(start_order(&[]), Ok(vec![]));
    }

    #[test]
    fn dependencies_first_then_file_order() {
        // 0 needs 2, 1 needs nothing, 2 needs 1, 3 needs 0 and 1.
        let deps = [vec![2], vec![], vec![1], vec![0, 1]];
        assert_eq!(start_order(&deps), Ok(vec![1, 2, 0, 3]));
        // A diamond: 0 needs 1 and 2, both need 3.
        let deps = [vec![1, 2], vec![3], vec![3], vec![]];
        assert_eq!(start_order(&deps), Ok(vec![3, 1, 2, 0]));
    }

    #[test]
    fn cycles_are_named_from_their_first_vm() {
        assert_eq!(start_order(&[vec![1], vec![0]]), Err(vec![0, 1, 0]));
        // 0 waits on the cycle 1 -> 2 -> 3 -> 1 without being in it.
        let deps = [vec![2], vec![3], vec![3, 1], vec![1]];
        assert_eq!(start_order(&deps), Err(vec![1, 3, 1]));
        let deps = [vec![], vec![2], vec![3], vec![1]];
        assert_eq!(start_order(&deps), Err(vec![1, 2, 3, 1]));
    }
}
