//! `promptcl compare`: methods × metrics, mean ± std over seeds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use promptcl_learner::metrics::mean_std;

use crate::results::Metrics;

/// The papers' metrics first (task-averaged, official names), then the
/// sample-weighted accuracies over all seen test samples.
pub const COLUMNS: [&str; 6] = ["faa", "caa", "ffm", "bwt", "final acc", "avg acc"];

pub struct Row {
    pub key: String,
    pub seeds: usize,
    pub tasks: usize,
    /// (mean, std) per column.
    pub values: Vec<(f64, f64)>,
}

/// Groups finished runs by (name, method, dataset).
pub fn rows(runs: &[Metrics]) -> Vec<Row> {
    let mut groups: BTreeMap<String, Vec<&Metrics>> = BTreeMap::new();
    for m in runs {
        groups.entry(format!("{} / {} / {}", m.name, m.method, m.dataset)).or_default().push(m);
    }
    groups
        .into_iter()
        .map(|(key, ms)| {
            let sums: Vec<_> = ms.iter().filter_map(|m| m.summary.clone()).collect();
            let col = |f: fn(&promptcl_learner::metrics::Summary) -> f64| mean_std(&sums.iter().map(f).collect::<Vec<_>>());
            Row {
                key,
                seeds: sums.len(),
                tasks: ms.iter().map(|m| m.matrix.num_tasks()).max().unwrap_or(0),
                values: vec![
                    col(|s| s.faa),
                    col(|s| s.caa),
                    col(|s| s.ffm),
                    col(|s| s.backward_transfer),
                    col(|s| s.final_accuracy),
                    col(|s| s.average_accuracy),
                ],
            }
        })
        .collect()
}

fn cell((m, s): (f64, f64), seeds: usize) -> String {
    if seeds > 1 {
        format!("{m:.2} ± {s:.2}")
    } else {
        format!("{m:.2}")
    }
}

pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from("| run / method / dataset | seeds | tasks |");
    for c in COLUMNS {
        let _ = write!(out, " {c} |");
    }
    out.push_str("\n| --- | ---: | ---: |");
    out.push_str(&" ---: |".repeat(COLUMNS.len()));
    out.push('\n');
    for r in rows {
        let _ = write!(out, "| {} | {} | {} |", r.key, r.seeds, r.tasks);
        for &v in &r.values {
            let _ = write!(out, " {} |", cell(v, r.seeds));
        }
        out.push('\n');
    }
    out
}

/// One row per run key: `run,seeds,tasks,<metric>_mean,<metric>_std,…`.
/// Run names are quoted as CSV needs (a name may hold commas or quotes).
pub fn csv(rows: &[Row]) -> anyhow::Result<Vec<u8>> {
    let mut w = csv::Writer::from_writer(Vec::new());
    let metrics = COLUMNS.iter().map(|c| c.replace(' ', "_")).flat_map(|c| [format!("{c}_mean"), format!("{c}_std")]);
    w.write_record(["run", "seeds", "tasks"].map(String::from).into_iter().chain(metrics))?;
    for r in rows {
        let values = r.values.iter().flat_map(|(m, s)| [format!("{m:.4}"), format!("{s:.4}")]);
        w.write_record([r.key.clone(), r.seeds.to_string(), r.tasks.to_string()].into_iter().chain(values))?;
    }
    w.into_inner().map_err(|e| anyhow::anyhow!("{}", e.error()))
}

/// A plain aligned table for the terminal.
pub fn terminal(rows: &[Row]) -> String {
    let mut table: Vec<Vec<String>> =
        vec![["run / method / dataset", "seeds"].iter().map(|s| s.to_string()).chain(COLUMNS.iter().map(|s| s.to_string())).collect()];
    for r in rows {
        let mut line = vec![r.key.clone(), r.seeds.to_string()];
        line.extend(r.values.iter().map(|&v| cell(v, r.seeds)));
        table.push(line);
    }
    let widths: Vec<usize> = (0..table[0].len()).map(|c| table.iter().map(|l| l[c].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for (i, line) in table.iter().enumerate() {
        for (c, v) in line.iter().enumerate() {
            let pad = widths[c] - v.chars().count();
            if c == 0 {
                let _ = write!(out, "{v}{}  ", " ".repeat(pad));
            } else {
                let _ = write!(out, "{}{v}  ", " ".repeat(pad));
            }
        }
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * widths.len()));
            out.push('\n');
        }
    }
    out
}

/// The accuracy matrix of one run as a terminal table.
pub fn matrix_table(m: &Metrics) -> String {
    let t = m.matrix.num_tasks();
    let mut out = String::from("after task |");
    for j in 0..t {
        let _ = write!(out, " T{:<5}", j + 1);
    }
    out.push_str("| seen\n");
    for (i, row) in m.matrix.rows.iter().enumerate() {
        let _ = write!(out, "{:>10} |", i + 1);
        for j in 0..t {
            match row.get(j) {
                Some(v) => {
                    let _ = write!(out, " {v:<6.1}");
                }
                None => out.push_str("       "),
            }
        }
        let _ = writeln!(out, "| {:.1}", m.matrix.seen_accuracy[i]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run name with a comma and quotes survives the round trip through a
    /// CSV reader, and every row has as many cells as the header.
    #[test]
    fn csv_quotes_awkward_run_names() {
        let key = r#"lr "0.1", warm / l2p / cifar100"#.to_string();
        let rows = [Row { key: key.clone(), seeds: 2, tasks: 10, values: vec![(81.25, 0.5); COLUMNS.len()] }];
        let bytes = csv(&rows).unwrap();
        let mut r = ::csv::Reader::from_reader(bytes.as_slice());
        let header = r.headers().unwrap().clone();
        assert_eq!(header.len(), 3 + 2 * COLUMNS.len());
        assert_eq!(&header[3], "faa_mean");
        let records: Vec<_> = r.records().map(Result::unwrap).collect();
        assert_eq!(records.len(), 1);
        assert_eq!(&records[0][0], key);
        assert_eq!(records[0].len(), header.len());
        assert_eq!(&records[0][3], "81.2500");
    }
}
