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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Accuracy on all classes after the last task.
    pub final_accuracy: f64,
    /// Mean over tasks of the accuracy on all seen classes after each task
    /// (NoRGa's CAA, PyCIL's "average incremental accuracy").
    pub average_accuracy: f64,
    /// Mean over tasks of R[T][j] (the official `evaluate_till_now` "Acc@1").
    pub final_task_average: f64,
    /// Mean over old tasks of (max past accuracy − final accuracy) (FFM).
    pub forgetting: f64,
    /// Mean over old tasks of (R[T][j] − R[j][j]).
    pub backward_transfer: f64,
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
        let forgetting = mean(
            &mut (0..old).map(|j| {
                let best = (j..old).map(|i| self.rows[i][j]).fold(f64::NEG_INFINITY, f64::max);
                best - last[j]
            }),
            old,
        );
        let backward_transfer = mean(&mut (0..old).map(|j| last[j] - self.rows[j][j]), old);
        Some(Summary {
            final_accuracy: *self.seen_accuracy.last()?,
            average_accuracy: mean(&mut self.seen_accuracy.iter().copied(), t),
            final_task_average: mean(&mut last.iter().copied(), t),
            forgetting,
            backward_transfer,
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

    /// Hand-computed example, 3 tasks of equal size.
    ///   R = [[90],
    ///        [80, 70],
    ///        [60, 65, 50]]
    #[test]
    fn metrics_match_hand_computation() {
        let mut m = AccuracyMatrix::default();
        m.push(vec![90.0], 90.0, None);
        m.push(vec![80.0, 70.0], 75.0, None);
        m.push(vec![60.0, 65.0, 50.0], 175.0 / 3.0, Some(vec![0.9, 0.8, 1.0]));
        let s = m.summary().unwrap();
        assert!((s.final_accuracy - 175.0 / 3.0).abs() < 1e-12);
        assert!((s.average_accuracy - (90.0 + 75.0 + 175.0 / 3.0) / 3.0).abs() < 1e-12);
        assert!((s.final_task_average - 175.0 / 3.0).abs() < 1e-12);
        // forgetting: task0 max(90, 80) − 60 = 30; task1 max(70) − 65 = 5 → 17.5
        assert!((s.forgetting - 17.5).abs() < 1e-12);
        // BWT: (60 − 90 + 65 − 70) / 2 = −17.5
        assert!((s.backward_transfer + 17.5).abs() < 1e-12);
    }

    #[test]
    fn single_task_has_no_forgetting() {
        let mut m = AccuracyMatrix::default();
        m.push(vec![42.0], 42.0, None);
        let s = m.summary().unwrap();
        assert_eq!((s.forgetting, s.backward_transfer, s.final_accuracy), (0.0, 0.0, 42.0));
        assert!(AccuracyMatrix::default().summary().is_none());
    }

    #[test]
    fn mean_std_is_sample_std() {
        let (m, s) = mean_std(&[1.0, 2.0, 3.0, 4.0]);
        assert!((m - 2.5).abs() < 1e-12 && (s - 1.290_994_448_735_805_6).abs() < 1e-12);
    }
}
