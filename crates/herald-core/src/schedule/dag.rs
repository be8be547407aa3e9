//! The tasks of a process as a dependency graph: cycles, when a task may
//! start, and how a run ends.

use std::collections::{BTreeMap, HashMap};

use super::definition::TaskSpec;
use super::rules::{RunState, TaskState};

/// The names along one cycle, first name repeated at the end
/// (`["a", "b", "a"]`); `None` when the graph has none. Dependencies on
/// unknown tasks are ignored here (they are reported on their own).
pub fn find_cycle(tasks: &[TaskSpec]) -> Option<Vec<String>> {
    let index: HashMap<&str, usize> = tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    // 0 = not visited, 1 = on the current path, 2 = done.
    let mut mark = vec![0u8; tasks.len()];
    let mut path = Vec::new();
    for start in 0..tasks.len() {
        if let Some(cycle) = visit(start, tasks, &index, &mut mark, &mut path) {
            return Some(cycle);
        }
    }
    None
}

fn visit(
    node: usize,
    tasks: &[TaskSpec],
    index: &HashMap<&str, usize>,
    mark: &mut [u8],
    path: &mut Vec<usize>,
) -> Option<Vec<String>> {
    match mark[node] {
        2 => return None,
        1 => {
            let from = path.iter().position(|&n| n == node).unwrap_or(0);
            let mut cycle: Vec<String> = path[from..]
                .iter()
                .map(|&n| tasks[n].name.clone())
                .collect();
            cycle.push(tasks[node].name.clone());
            return Some(cycle);
        }
        _ => {}
    }
    mark[node] = 1;
    path.push(node);
    for dep in &tasks[node].depends_on {
        if let Some(&next) = index.get(dep.task()) {
            if let Some(cycle) = visit(next, tasks, index, mark, path) {
                return Some(cycle);
            }
        }
    }
    path.pop();
    mark[node] = 2;
    None
}

/// Whether a pending task may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// A dependency has not finished.
    Wait,
    Ready,
    /// A dependency that had to succeed did not: the task never runs.
    Skip,
}

/// Readiness of `task` given the states of the run's tasks.
pub fn readiness(task: &TaskSpec, states: &BTreeMap<String, TaskState>) -> Readiness {
    let mut ready = Readiness::Ready;
    for dep in &task.depends_on {
        match states.get(dep.task()).copied() {
            Some(TaskState::Succeeded) => {}
            Some(state) if state.is_terminal() => {
                if dep.success_required() {
                    return Readiness::Skip;
                }
            }
            _ => ready = Readiness::Wait,
        }
    }
    ready
}

/// How a run ends once every task has: `None` while one is still going.
/// Succeeded only if every task succeeded.
pub fn run_outcome(states: &BTreeMap<String, TaskState>) -> Option<RunState> {
    if states.values().any(|s| !s.is_terminal()) {
        return None;
    }
    if states.values().any(|s| *s == TaskState::Cancelled) {
        return Some(RunState::Cancelled);
    }
    if states.values().all(|s| *s == TaskState::Succeeded) {
        Some(RunState::Succeeded)
    } else {
        Some(RunState::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::definition::{Dependency, Executable};

    fn task(name: &str, deps: &[(&str, bool)]) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            depends_on: deps
                .iter()
                .map(|(t, required)| Dependency::Full {
                    task: (*t).into(),
                    success_required: *required,
                })
                .collect(),
            max_attempts: 1,
            backoff: Default::default(),
            max_runtime: None,
            require_explicit_success: false,
            run: Executable::Shell {
                command: vec!["true".into()],
                env: Default::default(),
                working_dir: None,
            },
        }
    }

    fn states(pairs: &[(&str, TaskState)]) -> BTreeMap<String, TaskState> {
        pairs.iter().map(|(n, s)| ((*n).into(), *s)).collect()
    }

    #[test]
    fn cycles_are_found_with_their_path() {
        let tasks = [
            task("a", &[]),
            task("b", &[("a", true), ("d", true)]),
            task("c", &[("b", true)]),
            task("d", &[("c", true)]),
        ];
        assert_eq!(
            find_cycle(&tasks).unwrap(),
            ["b", "d", "c", "b"].map(String::from)
        );
        let diamond = [
            task("a", &[]),
            task("b", &[("a", true)]),
            task("c", &[("a", true)]),
            task("d", &[("b", true), ("c", false)]),
        ];
        assert_eq!(find_cycle(&diamond), None);
    }

    #[test]
    fn a_task_waits_for_every_dependency() {
        use TaskState::*;
        let t = task("d", &[("b", true), ("c", false)]);
        assert_eq!(
            readiness(&t, &states(&[("b", Succeeded), ("c", Running)])),
            Readiness::Wait
        );
        assert_eq!(
            readiness(&t, &states(&[("b", Succeeded), ("c", Retrying)])),
            Readiness::Wait
        );
        assert_eq!(
            readiness(&t, &states(&[("b", Succeeded), ("c", Failed)])),
            Readiness::Ready,
            "c need not succeed"
        );
        assert_eq!(
            readiness(&t, &states(&[("b", Failed), ("c", Running)])),
            Readiness::Skip,
            "b had to succeed"
        );
        assert_eq!(
            readiness(&t, &states(&[("b", Skipped), ("c", Succeeded)])),
            Readiness::Skip
        );
        assert_eq!(readiness(&task("a", &[]), &states(&[])), Readiness::Ready);
    }

    #[test]
    fn a_run_ends_when_every_task_has() {
        use TaskState::*;
        assert_eq!(
            run_outcome(&states(&[("a", Succeeded), ("b", AwaitingSuccess)])),
            None
        );
        assert_eq!(
            run_outcome(&states(&[("a", Succeeded), ("b", Succeeded)])),
            Some(RunState::Succeeded)
        );
        assert_eq!(
            run_outcome(&states(&[("a", Failed), ("b", Skipped)])),
            Some(RunState::Failed)
        );
        assert_eq!(
            run_outcome(&states(&[("a", Cancelled), ("b", Succeeded)])),
            Some(RunState::Cancelled)
        );
    }
}
