//! Class-incremental task splits.

use serde::{Deserialize, Serialize};

use crate::dataset::Split;
use crate::error::{Result, StreamError};
use crate::order::ClassOrder;

/// What to do when the classes after the first task do not divide evenly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Remainder {
    /// Refuse: the config must divide evenly.
    #[default]
    Error,
    /// The last task takes the extra classes.
    LastTask,
    /// The first tasks each take one extra class.
    Spread,
    /// Every task takes `ceil(classes / tasks)` and the last what is left: the
    /// official L2P / DualPrompt / HiDe / NoRGa `split_single_dataset`.
    Ceil,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    pub num_tasks: usize,
    /// A larger (or smaller) first task, as in "B50 Inc10" protocols.
    #[serde(default)]
    pub first_task_classes: Option<usize>,
    #[serde(default)]
    pub remainder: Remainder,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: usize,
    /// Dataset class ids, in stream order.
    pub classes: Vec<usize>,
}

/// A class order cut into tasks. Every sample keeps its dataset label; the
/// stream adds its task id and its *incremental* label (position in the
/// class order), which is what heads grow over.
#[derive(Debug, Clone)]
pub struct TaskStream {
    order: Vec<usize>,
    tasks: Vec<Task>,
    task_of: Vec<usize>,
    position: Vec<usize>,
}

impl TaskStream {
    pub fn new(num_classes: usize, order: &ClassOrder, cfg: &SplitConfig) -> Result<Self> {
        let sizes = task_sizes(num_classes, cfg)?;
        let order = order.resolve(num_classes)?;
        let mut tasks = Vec::with_capacity(sizes.len());
        let (mut task_of, mut position) = (vec![0; num_classes], vec![0; num_classes]);
        let mut start = 0;
        for (id, size) in sizes.into_iter().enumerate() {
            let classes = order[start..start + size].to_vec();
            for (k, &c) in classes.iter().enumerate() {
                task_of[c] = id;
                position[c] = start + k;
            }
            tasks.push(Task { id, classes });
            start += size;
        }
        Ok(Self { order, tasks, task_of, position })
    }

    /// A stream whose tasks are given (a protocol's fixed task composition).
    pub fn from_tasks(num_classes: usize, tasks: Vec<Vec<usize>>) -> Result<Self> {
        let order: Vec<usize> = tasks.concat();
        ClassOrder::Explicit(order.clone()).resolve(num_classes)?;
        let (mut task_of, mut position) = (vec![0; num_classes], vec![0; num_classes]);
        for (id, classes) in tasks.iter().enumerate() {
            if classes.is_empty() {
                return Err(StreamError::Config(format!("task {id} has no classes")));
            }
            for &c in classes {
                task_of[c] = id;
            }
        }
        for (pos, &c) in order.iter().enumerate() {
            position[c] = pos;
        }
        let tasks = tasks.into_iter().enumerate().map(|(id, classes)| Task { id, classes }).collect();
        Ok(Self { order, tasks, task_of, position })
    }

    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    pub fn num_tasks(&self) -> usize {
        self.tasks.len()
    }

    pub fn order(&self) -> &[usize] {
        &self.order
    }

    pub fn task_of(&self, class: usize) -> usize {
        self.task_of[class]
    }

    /// Position of `class` in the class order: task t owns a contiguous range.
    pub fn incremental_label(&self, class: usize) -> usize {
        self.position[class]
    }

    /// Classes seen once task `task` is done, in stream order.
    pub fn seen_classes(&self, task: usize) -> &[usize] {
        let end: usize = self.tasks[..=task].iter().map(|t| t.classes.len()).sum();
        &self.order[..end]
    }

    /// Incremental-label range `[start, end)` of a task.
    pub fn label_range(&self, task: usize) -> std::ops::Range<usize> {
        let start: usize = self.tasks[..task].iter().map(|t| t.classes.len()).sum();
        start..start + self.tasks[task].classes.len()
    }

    /// Indices of the samples of `split` that belong to `task`, in dataset order.
    pub fn indices(&self, split: &Split, task: usize) -> Vec<usize> {
        split.labels.iter().enumerate().filter(|(_, &l)| self.task_of[l] == task).map(|(i, _)| i).collect()
    }

    /// Indices of the samples of all tasks up to and including `task`.
    pub fn indices_until(&self, split: &Split, task: usize) -> Vec<usize> {
        split.labels.iter().enumerate().filter(|(_, &l)| self.task_of[l] <= task).map(|(i, _)| i).collect()
    }
}

fn task_sizes(n: usize, cfg: &SplitConfig) -> Result<Vec<usize>> {
    let bad = |m: String| Err(StreamError::Config(m));
    let t = cfg.num_tasks;
    if t == 0 || t > n {
        return bad(format!("num_tasks = {t} must be between 1 and the number of classes ({n})"));
    }
    let (first, rest_tasks, rest_classes) = match cfg.first_task_classes {
        Some(f) if f == 0 || f > n || (t > 1 && f >= n) || (t == 1 && f != n) => {
            return bad(format!("first_task_classes = {f} leaves no room for {t} task(s) over {n} classes"))
        }
        Some(f) => (Some(f), t - 1, n - f),
        None => (None, t, n),
    };
    if rest_tasks > 0 && rest_classes < rest_tasks {
        return bad(format!("{rest_classes} classes cannot fill {rest_tasks} tasks"));
    }
    let base = rest_classes.checked_div(rest_tasks).unwrap_or(0);
    let extra = rest_classes.checked_rem(rest_tasks).unwrap_or(0);
    let mut sizes = vec![base; rest_tasks];
    if extra > 0 {
        match cfg.remainder {
            Remainder::Error => {
                return bad(format!(
                    "{rest_classes} classes do not divide into {rest_tasks} tasks; set first_task_classes, or remainder = \"last-task\" or \"spread\""
                ))
            }
            Remainder::LastTask => *sizes.last_mut().expect("rest_tasks > 0") += extra,
            Remainder::Spread => sizes.iter_mut().take(extra).for_each(|s| *s += 1),
            Remainder::Ceil => {
                let per = rest_classes.div_ceil(rest_tasks);
                let mut left = rest_classes;
                for s in sizes.iter_mut() {
                    *s = per.min(left);
                    left -= *s;
                }
                if sizes.contains(&0) {
                    return bad(format!("ceil split of {rest_classes} classes into {rest_tasks} tasks leaves an empty task"));
                }
            }
        }
    }
    if let Some(f) = first {
        sizes.insert(0, f);
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(num_tasks: usize, first: Option<usize>, remainder: Remainder) -> SplitConfig {
        SplitConfig { num_tasks, first_task_classes: first, remainder }
    }

    #[test]
    fn even_and_uneven_splits() {
        assert_eq!(task_sizes(100, &cfg(10, None, Remainder::Error)).unwrap(), [10; 10]);
        assert_eq!(task_sizes(200, &cfg(20, None, Remainder::Error)).unwrap(), [10; 20]);
        assert_eq!(task_sizes(100, &cfg(6, Some(50), Remainder::Error)).unwrap(), [50, 10, 10, 10, 10, 10]);
        assert!(task_sizes(100, &cfg(3, None, Remainder::Error)).unwrap_err().to_string().contains("remainder"));
        assert_eq!(task_sizes(100, &cfg(3, None, Remainder::LastTask)).unwrap(), [33, 33, 34]);
        assert_eq!(task_sizes(100, &cfg(3, None, Remainder::Spread)).unwrap(), [34, 33, 33]);
        assert_eq!(task_sizes(100, &cfg(3, None, Remainder::Ceil)).unwrap(), [34, 34, 32]);
        assert!(task_sizes(10, &cfg(4, None, Remainder::Ceil)).is_ok());
        assert!(task_sizes(9, &cfg(6, None, Remainder::Ceil)).is_err(), "2,2,2,2,1,0");
        assert!(task_sizes(10, &cfg(11, None, Remainder::Error)).is_err());
        assert!(task_sizes(10, &cfg(3, Some(10), Remainder::Error)).is_err());
        assert_eq!(task_sizes(10, &cfg(1, Some(10), Remainder::Error)).unwrap(), [10]);
    }

    #[test]
    fn stream_partitions_the_order() {
        let s = TaskStream::new(20, &ClassOrder::Seeded { seed: 5 }, &cfg(4, None, Remainder::Error)).unwrap();
        let mut all: Vec<usize> = s.tasks().iter().flat_map(|t| t.classes.clone()).collect();
        assert_eq!(all, s.order());
        all.sort();
        assert_eq!(all, (0..20).collect::<Vec<_>>(), "no class in two tasks, none missing");
        for t in s.tasks() {
            for &c in &t.classes {
                assert_eq!(s.task_of(c), t.id);
                assert!(s.label_range(t.id).contains(&s.incremental_label(c)));
            }
        }
        assert_eq!(s.seen_classes(1), &s.order()[..10]);
    }
}
