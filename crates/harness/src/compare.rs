//! `promptcl compare`: methods × metrics, mean ± std over seeds.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use promptcl_learner::metrics::{mean_std, Summary};

use crate::results::Metrics;

/// The papers' metrics first (task-averaged, official names), then the
/// sample-weighted accuracies over all seen test samples, then the
/// task-identification accuracy after the last task (methods that infer it).
pub const COLUMNS: [&str; 7] = ["faa", "caa", "ffm", "bwt", "final acc", "avg acc", "task id"];

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
                    mean_std(&ms.iter().filter_map(|m| final_task_id(m)).collect::<Vec<_>>()),
                ],
            }
        })
        .collect()
}

/// Task-identification accuracy at the last evaluation, averaged over the tasks.
pub fn final_task_id(m: &Metrics) -> Option<f64> {
    let per_task = m.matrix.task_id_accuracy.last()?.as_ref()?;
    (!per_task.is_empty()).then(|| per_task.iter().sum::<f64>() / per_task.len() as f64)
}

fn cell((m, s): (f64, f64), seeds: usize) -> String {
    if m.is_nan() {
        "–".into()
    } else if seeds > 1 {
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

/// A sweep's paper table: rows (methods and the other row axes) × column
/// groups (benchmark, backbone) × metrics, each cell the mean ± std over the
/// seeds that ran it.
pub struct PaperTable {
    pub row_header: String,
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    pub metrics: Vec<String>,
    /// (row, column) → the summaries of its runs.
    pub cells: BTreeMap<(usize, usize), Vec<Summary>>,
}

fn metric(s: &Summary, name: &str) -> f64 {
    match name {
        "faa" => s.faa,
        "caa" => s.caa,
        "ffm" => s.ffm,
        "bwt" => s.backward_transfer,
        "final" => s.final_accuracy,
        _ => s.average_accuracy,
    }
}

impl PaperTable {
    /// `rows` / `columns`: the keys naming them: `method`, `dataset`, or a tag.
    pub fn new(runs: &[Metrics], rows: &[String], columns: &[String], metrics: &[String]) -> Self {
        let label = |m: &Metrics, keys: &[String]| -> String {
            let value = |k: &String| match k.as_str() {
                "method" => m.method.clone(),
                "dataset" => m.dataset.clone(),
                _ => m.tags.get(k).cloned().unwrap_or_else(|| "?".into()),
            };
            keys.iter().map(value).collect::<Vec<_>>().join(" / ")
        };
        let (mut row_names, mut col_names) = (Vec::<String>::new(), Vec::<String>::new());
        let mut cells: BTreeMap<(usize, usize), Vec<Summary>> = BTreeMap::new();
        let index = |names: &mut Vec<String>, n: String| {
            names.iter().position(|x| *x == n).unwrap_or_else(|| {
                names.push(n);
                names.len() - 1
            })
        };
        for m in runs {
            let r = index(&mut row_names, label(m, rows));
            let c = index(&mut col_names, label(m, columns));
            let cell = cells.entry((r, c)).or_default();
            cell.extend(m.summary.clone());
        }
        let header = |k: &String| if k == "method.name" { "method".to_string() } else { k.clone() };
        let row_header = rows.iter().map(header).collect::<Vec<_>>().join(" / ");
        Self { row_header, rows: row_names, columns: col_names, metrics: metrics.to_vec(), cells }
    }

    /// (mean, std, seeds) of one metric in a cell.
    pub fn value(&self, r: usize, c: usize, metric_name: &str) -> Option<(f64, f64, usize)> {
        let sums = self.cells.get(&(r, c)).filter(|s| !s.is_empty())?;
        let (m, sd) = mean_std(&sums.iter().map(|s| metric(s, metric_name)).collect::<Vec<_>>());
        Some((m, sd, sums.len()))
    }

    fn cell_text(&self, r: usize, c: usize, k: &str, latex: bool) -> String {
        match self.value(r, c, k) {
            None => {
                if latex {
                    "--".into()
                } else {
                    "—".into()
                }
            }
            Some((m, _, 1)) => format!("{m:.2}"),
            Some((m, sd, _)) if latex => format!("${m:.2} \\pm {sd:.2}$"),
            Some((m, sd, _)) => format!("{m:.2} ± {sd:.2}"),
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = format!("| {} |", self.row_header);
        for c in &self.columns {
            for k in &self.metrics {
                let _ = write!(out, " {c} {} |", k.to_uppercase());
            }
        }
        out.push_str("\n| --- |");
        out.push_str(&" ---: |".repeat(self.columns.len() * self.metrics.len()));
        out.push('\n');
        for (r, name) in self.rows.iter().enumerate() {
            let _ = write!(out, "| {name} |");
            for c in 0..self.columns.len() {
                for k in &self.metrics {
                    let _ = write!(out, " {} |", self.cell_text(r, c, k, false));
                }
            }
            out.push('\n');
        }
        let seeds: Vec<usize> = self.cells.values().map(Vec::len).collect();
        let (lo, hi) = (seeds.iter().min().copied().unwrap_or(0), seeds.iter().max().copied().unwrap_or(0));
        let _ = writeln!(out, "\nMean ± std over {} seeds per cell.", if lo == hi { lo.to_string() } else { format!("{lo} to {hi}") });
        out
    }

    /// One line per (row, column, metric): long format, for plotting tools.
    pub fn csv(&self) -> anyhow::Result<Vec<u8>> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record([self.row_header.as_str(), "column", "metric", "mean", "std", "seeds"])?;
        for (r, name) in self.rows.iter().enumerate() {
            for (c, col) in self.columns.iter().enumerate() {
                for k in &self.metrics {
                    if let Some((m, sd, n)) = self.value(r, c, k) {
                        w.write_record([name.clone(), col.clone(), k.clone(), format!("{m:.4}"), format!("{sd:.4}"), n.to_string()])?;
                    }
                }
            }
        }
        w.into_inner().map_err(|e| anyhow::anyhow!("{}", e.error()))
    }

    /// A booktabs tabular: a column group per benchmark / backbone.
    pub fn latex(&self) -> String {
        let k = self.metrics.len();
        let mut out = format!("\\begin{{tabular}}{{l{}}}\n\\toprule\n", format!(" {}", "c".repeat(k)).repeat(self.columns.len()));
        for c in &self.columns {
            let _ = write!(out, " & \\multicolumn{{{k}}}{{c}}{{{}}}", latex_escape(c));
        }
        out.push_str(" \\\\\n");
        for c in 0..self.columns.len() {
            let _ = write!(out, "\\cmidrule(lr){{{}-{}}}", 2 + c * k, 1 + (c + 1) * k);
        }
        let _ = write!(out, "\n{}", latex_escape(&self.row_header));
        for _ in &self.columns {
            for m in &self.metrics {
                let _ = write!(out, " & {}", m.to_uppercase());
            }
        }
        out.push_str(" \\\\\n\\midrule\n");
        for (r, name) in self.rows.iter().enumerate() {
            out.push_str(&latex_escape(name));
            for c in 0..self.columns.len() {
                for m in &self.metrics {
                    let _ = write!(out, " & {}", self.cell_text(r, c, m, true));
                }
            }
            out.push_str(" \\\\\n");
        }
        out.push_str("\\bottomrule\n\\end{tabular}\n");
        out
    }
}

fn latex_escape(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        match ch {
            '&' | '%' | '$' | '#' | '_' | '{' | '}' => {
                out.push('\\');
                out.push(ch);
            }
            '~' => out.push_str("\\textasciitilde{}"),
            '^' => out.push_str("\\textasciicircum{}"),
            '\\' => out.push_str("\\textbackslash{}"),
            _ => out.push(ch),
        }
    }
    out
}

/// Method `a` against method `b` on the seeds both ran (same stream, same
/// task order per seed): per-seed differences of the final average accuracy
/// and a paired two-sided t-test on them.
#[derive(Debug, Clone, PartialEq)]
pub struct Paired {
    pub a: String,
    pub b: String,
    /// (seed, faa of a, faa of b), by seed.
    pub seeds: Vec<(u64, f64, f64)>,
    /// Mean and standard deviation of `a − b`.
    pub mean: f64,
    pub std: f64,
    pub t: f64,
    /// Two-sided p-value under Student's t with `seeds − 1` degrees of freedom.
    pub p: f64,
}

/// `a` and `b` name a method (`wave-cre`) or, where runs of several names ran
/// it (an ablation), one run name's (`cre-fewrel80-embeddings/wave-cre`).
pub fn paired(runs: &[Metrics], a: &str, b: &str) -> anyhow::Result<Paired> {
    let faa = |key: &str| -> anyhow::Result<BTreeMap<u64, f64>> {
        let mine: Vec<&Metrics> = runs.iter().filter(|m| m.method == key || format!("{}/{}", m.name, m.method) == key).collect();
        let names: std::collections::BTreeSet<&str> = mine.iter().map(|m| m.name.as_str()).collect();
        if names.len() > 1 {
            let options: Vec<String> = names.iter().map(|n| format!("{n}/{key}")).collect();
            anyhow::bail!("--paired: runs of {} names ran `{key}`; name one: {}", names.len(), options.join(", "));
        }
        Ok(mine.into_iter().filter_map(|m| Some((m.seed, m.summary.as_ref()?.faa))).collect())
    };
    let (fa, fb) = (faa(a)?, faa(b)?);
    let seeds: Vec<(u64, f64, f64)> = fa.iter().filter_map(|(&s, &x)| Some((s, x, *fb.get(&s)?))).collect();
    if seeds.len() < 2 {
        anyhow::bail!("--paired {a},{b}: {} seed(s) ran both methods; a paired test needs at least 2", seeds.len());
    }
    let diffs: Vec<f64> = seeds.iter().map(|(_, x, y)| x - y).collect();
    let (mean, std) = mean_std(&diffs);
    let n = diffs.len() as f64;
    let t = mean / (std / n.sqrt());
    let p = if std == 0.0 {
        if mean == 0.0 {
            1.0
        } else {
            0.0
        }
    } else {
        student_t_two_sided(t, n - 1.0)
    };
    Ok(Paired { a: a.into(), b: b.into(), seeds, mean, std, t, p })
}

impl Paired {
    pub fn markdown(&self) -> String {
        let mut out = format!("| seed | {} faa | {} faa | difference |\n| ---: | ---: | ---: | ---: |\n", self.a, self.b);
        for (s, x, y) in &self.seeds {
            let _ = writeln!(out, "| {s} | {x:.2} | {y:.2} | {:+.2} |", x - y);
        }
        let _ = writeln!(
            out,
            "\n{} − {}: {:+.2} ± {:.2} over {} seeds; paired t = {:.2}, two-sided p = {} (df = {})",
            self.a,
            self.b,
            self.mean,
            self.std,
            self.seeds.len(),
            self.t,
            if self.p >= 1e-3 { format!("{:.3}", self.p) } else { format!("{:.1e}", self.p) },
            self.seeds.len() - 1
        );
        out
    }
}

/// P(|T| ≥ |t|) for Student's t with `df` degrees of freedom: I_{df/(df+t²)}(df/2, 1/2).
pub fn student_t_two_sided(t: f64, df: f64) -> f64 {
    regularized_beta(df / (df + t * t), df / 2.0, 0.5)
}

/// The regularized incomplete beta function I_x(a, b), by its continued
/// fraction (Lentz's method), on the side where it converges fast.
fn regularized_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_fraction(1.0 - x, b, a) / b
    }
}

fn beta_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    d = 1.0 / if d.abs() < TINY { TINY } else { d };
    let mut h = d;
    for m in 1..300 {
        let m = f64::from(m);
        for num in [m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)), -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))] {
            d = 1.0 + num * d;
            d = 1.0 / if d.abs() < TINY { TINY } else { d };
            c = 1.0 + num / c;
            c = if c.abs() < TINY { TINY } else { c };
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9: about 15 digits).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum = C[1..].iter().enumerate().fold(C[0], |acc, (i, c)| acc + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(method: &str, dataset: &str, backbone: &str, seed: u64, acc: f64) -> Metrics {
        let matrix = promptcl_learner::metrics::AccuracyMatrix { rows: vec![vec![acc]], seen_accuracy: vec![acc], task_id_accuracy: vec![None] };
        Metrics {
            name: method.into(),
            method: method.into(),
            dataset: dataset.into(),
            seed,
            summary: matrix.summary(),
            matrix,
            tags: [("backbone".to_string(), backbone.to_string())].into(),
        }
    }

    /// Seeds of a cell average; a cell nobody ran is marked, not zero; labels
    /// are escaped for LaTeX and the column groups span their metrics.
    #[test]
    fn paper_table_groups_seeds_into_cells() {
        let runs = [
            run("l2p", "cifar", "sup_21k", 0, 80.0),
            run("l2p", "cifar", "sup_21k", 1, 84.0),
            run("l2p", "imr", "sup_21k", 0, 70.0),
            run("norga", "cifar", "sup_21k", 0, 90.0),
        ];
        let t = PaperTable::new(&runs, &["method".into()], &["dataset".into(), "backbone".into()], &["faa".into(), "caa".into()]);
        assert_eq!(t.rows, ["l2p", "norga"]);
        assert_eq!(t.columns, ["cifar / sup_21k", "imr / sup_21k"]);
        let (m, sd, n) = t.value(0, 0, "faa").unwrap();
        assert_eq!((m, n), (82.0, 2));
        assert!((sd - 8f64.sqrt()).abs() < 1e-12);
        assert!(t.value(1, 1, "faa").is_none());
        let md = t.markdown();
        assert!(md.contains("| l2p | 82.00 ± 2.83 | 82.00 ± 2.83 | 70.00 | 70.00 |"), "{md}");
        assert!(md.contains("| norga | 90.00 | 90.00 | — | — |") && md.contains("1 to 2 seeds"), "{md}");
        let tex = t.latex();
        assert!(tex.contains(r"\multicolumn{2}{c}{cifar / sup\_21k}") && tex.contains(r"\cmidrule(lr){4-5}"), "{tex}");
        assert!(tex.contains(r"l2p & $82.00 \pm 2.83$ & $82.00 \pm 2.83$ & 70.00 & 70.00 \\"), "{tex}");
        let csv = String::from_utf8(t.csv().unwrap()).unwrap();
        assert_eq!(csv.lines().count(), 1 + 2 * 2 + 2, "{csv}");
    }

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

    /// Only seeds both methods ran are paired; t = mean / (std / √n).
    #[test]
    fn paired_differences_on_common_seeds() {
        let runs = [
            run("wave-cre", "fewrel", "-", 1, 60.0),
            run("wave-cre", "fewrel", "-", 2, 64.0),
            run("wave-cre", "fewrel", "-", 3, 70.0),
            run("wave-cre", "fewrel", "-", 9, 99.0),
            run("hide-prompt", "fewrel", "-", 1, 58.0),
            run("hide-prompt", "fewrel", "-", 2, 60.0),
            run("hide-prompt", "fewrel", "-", 3, 64.0),
        ];
        let p = paired(&runs, "wave-cre", "hide-prompt").unwrap();
        assert_eq!(p.seeds.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert!((p.mean - 4.0).abs() < 1e-12 && (p.std - 2.0).abs() < 1e-12);
        assert!((p.t - 4.0 * 3f64.sqrt() / 2.0).abs() < 1e-12);
        assert!((p.p - (1.0 - p.t / (p.t * p.t + 2.0).sqrt())).abs() < 1e-10, "df = 2 closed form");
        assert!(p.markdown().contains("| 3 | 70.00 | 64.00 | +6.00 |"), "{}", p.markdown());
        let e = paired(&runs[..4], "wave-cre", "hide-prompt").unwrap_err().to_string();
        assert!(e.contains("0 seed(s) ran both"), "{e}");
        // An ablation ran wave-cre under another run name: the bare method is ambiguous.
        let mut more = runs.to_vec();
        more.extend([1, 2].map(|seed| Metrics { name: "ablation".into(), ..run("wave-cre", "fewrel", "-", seed, 10.0) }));
        let e = paired(&more, "wave-cre", "hide-prompt").unwrap_err().to_string();
        assert!(e.contains("ablation/wave-cre") && e.contains("wave-cre/wave-cre"), "{e}");
        let p = paired(&more, "ablation/wave-cre", "hide-prompt").unwrap();
        assert_eq!(p.seeds, [(1, 10.0, 58.0), (2, 10.0, 60.0)]);
        assert_eq!(paired(&more, "wave-cre/wave-cre", "hide-prompt").unwrap().mean, 4.0);
    }

    #[test]
    fn student_t_matches_closed_forms_and_tables() {
        // df = 1 (Cauchy): p = 1 − 2·atan(|t|)/π; df = 2: p = 1 − |t|/√(t² + 2).
        for t in [0.3, 1.0, 2.5, 10.0] {
            let cauchy = 1.0 - 2.0 * f64::atan(t) / std::f64::consts::PI;
            assert!((student_t_two_sided(t, 1.0) - cauchy).abs() < 1e-10, "t = {t}");
            let two = 1.0 - t / (t * t + 2.0).sqrt();
            assert!((student_t_two_sided(t, 2.0) - two).abs() < 1e-10, "t = {t}");
        }
        // Two-sided 5 % critical values of the t table.
        for (df, t) in [(4.0, 2.776_445), (10.0, 2.228_139), (30.0, 2.042_272)] {
            assert!((student_t_two_sided(t, df) - 0.05).abs() < 1e-5, "df = {df}");
        }
        assert!((student_t_two_sided(0.0, 5.0) - 1.0).abs() < 1e-12);
    }
}
