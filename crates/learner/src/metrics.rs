//! Continual-learning metrics over an accuracy matrix; plain `f64`, no tch.
//!
//! `R[i][j]` = accuracy (%) on task j's test data after training task i, j ≤ i.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AccuracyMatrix {
    /// Row i holds tasks 0..=i.
    pub rows: Vec<Vec<f64>>,
    /// Accuracy on all seen test samples after task i (sample-weighted).
    pub seen_accuracy: Vec<f64>,
    /// Task-identity accuracy per evaluated task after task i, where the method routes by task.
    pub task_id_accuracy: Vec<Option<Vec<f64>>>,
}

/// The papers' metrics under their official names (`faa`, `caa`, `ffm`, each
/// an unweighted mean over tasks of per-task accuracies, as l2p-pytorch's
/// `evaluate_till_now` and CODA-Prompt's trainer compute them), then the
/// sample-weighted accuracies over all seen test samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Final average accuracy: mean over tasks j of R[T][j] (the official
    /// `Acc@1` after the last task).
    pub faa: f64,
    /// Cumulative average accuracy: mean over i of the mean of R[i][0..=i].
    pub caa: f64,
    /// Final forgetting: mean over old tasks j of max_i R[i][j] − R[T][j],
    /// the max over every evaluation of task j, the last included (so never
    /// negative per task), as l2p-pytorch's `engine.py`.
    pub ffm: f64,
    /// Mean over old tasks of (R[T][j] − R[j][j]).
    pub backward_transfer: f64,
    /// Accuracy on all seen test samples after the last task (sample-weighted).
    pub final_accuracy: f64,
    /// Mean over tasks of the sample-weighted accuracy on all seen test
    /// samples after each task (PyCIL's "average incremental accuracy").
    pub average_accuracy: f64,
    pub num_tasks: usize,
}

impl AccuracyMatrix {
    pub fn push(&mut self, row: Vec<f64>, seen_accuracy: f64, task_id_accuracy: Option<Vec<f64>>) {
        debug_assert_eq!(row.len(), self.rows.len() + 1);
        self.rows.push(row);
        self.seen_accuracy.push(seen_accuracy);
        self.task_id_accuracy.push(task_id_accuracy);
    }

    pub fn num_tasks(&self) -> usize {
        self.rows.len()
    }

    pub fn summary(&self) -> Option<Summary> {
        let t = self.rows.len();
        let last = self.rows.last()?;
        let old = t - 1;
        let mean = |v: &mut dyn Iterator<Item = f64>, n: usize| if n == 0 { 0.0 } else { v.sum::<f64>() / n as f64 };
        let ffm = mean(&mut (0..old).map(|j| (j..t).map(|i| self.rows[i][j]).fold(f64::NEG_INFINITY, f64::max) - last[j]), old);
        Some(Summary {
            faa: mean(&mut last.iter().copied(), t),
            caa: mean(&mut self.rows.iter().map(|r| mean(&mut r.iter().copied(), r.len())), t),
            ffm,
            backward_transfer: mean(&mut (0..old).map(|j| last[j] - self.rows[j][j]), old),
            final_accuracy: *self.seen_accuracy.last()?,
            average_accuracy: mean(&mut self.seen_accuracy.iter().copied(), t),
            num_tasks: t,
        })
    }
}

/// Mean and sample standard deviation.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = xs.iter().sum::<f64>() / xs.len() as f64;
    if xs.len() < 2 {
        return (m, 0.0);
    }
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64;
    (m, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed example with unequal task sizes (task 0: 100 test
    /// samples, task 1: 50, task 2: 25), so sample-weighted and task-averaged
    /// accuracies differ, and task 1 gains after its own task, so the last
    /// evaluation is its best.
    ///   R = [[90],
    ///        [80, 70],
    ///        [60, 75, 50]]
    #[test]
    fn metrics_match_hand_computation() {
        let weighted = |row: &[f64]| {
            let n = [100.0, 50.0, 25.0];
            row.iter().zip(n).map(|(a, n)| a * n).sum::<f64>() / n[..row.len()].iter().sum::<f64>()
        };
        let rows = [vec![90.0], vec![80.0, 70.0], vec![60.0, 75.0, 50.0]];
        let mut m = AccuracyMatrix::default();
        for r in &rows {
            m.push(r.clone(), weighted(r), None);
        }
        let s = m.summary().unwrap();
        let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        close(s.faa, (60.0 + 75.0 + 50.0) / 3.0);
        close(s.caa, (90.0 + 75.0 + 185.0 / 3.0) / 3.0);
        // ffm: task 0 max(90, 80, 60) − 60 = 30; task 1 max(70, 75) − 75 = 0 → 15
        close(s.ffm, 15.0);
        // BWT: (60 − 90 + 75 − 70) / 2 = −12.5
        close(s.backward_transfer, -12.5);
        // Sample-weighted: after task 1 (8000 + 3500) / 150, after task 2 (6000 + 3750 + 1250) / 175.
        close(s.final_accuracy, 11000.0 / 175.0);
        close(s.average_accuracy, (90.0 + 11500.0 / 150.0 + 11000.0 / 175.0) / 3.0);
        assert!(s.final_accuracy != s.faa && s.average_accuracy != s.caa);
    }

    #[test]
    fn single_task_has_no_forgetting() {
        let mut m = AccuracyMatrix::default();
        m.push(vec![42.0], 42.0, None);
        let s = m.summary().unwrap();
        assert_eq!((s.ffm, s.backward_transfer, s.final_accuracy, s.faa, s.caa), (0.0, 0.0, 42.0, 42.0, 42.0));
        assert!(AccuracyMatrix::default().summary().is_none());
    }

    #[test]
    fn mean_std_is_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12 && (s - 1.290_994_448_735_805_6).abs() < 1e-12);
    }
}
