//! Every registered method end to end on the tiny fixture stream (CPU, seconds),
//! and resume == uninterrupted.

use std::path::{Path, PathBuf};

mod common;

use common::repo;
use promptcl_harness::{config::RunConfig, results, run};

fn params(method: &str) -> &'static str {
    match method {
        // E-prompts as experts: reparameterised, zero-init gated, with task LoRA (resumed below too).
        "dualprompt" => "g_layers = [0]\ne_layers = [1, 2]\ne_length = 3\nprompt = { param = \"reparam-mlp\", gate = \"zero-init\" }\nlora = { rank = 2 }",
        // Components as experts: reparameterised, under one shared zero-init gate, beside a shared LoRA.
        "coda-prompt" => "pool_size = 10\nlength = 4\nlayers = [0, 1, 2]\nprompt = { param = \"reparam-mlp\", reparam_hidden = 8, gate = \"zero-init\" }\nlora = { rank = 2 }",
        // The prefix-tuned pool as experts (the goldens cover token prompts): nonlinear, NoRGa-gated, with a shared LoRA.
        "l2p" => "pool_size = 6\ntop_k = 2\nlength = 3\nprefix_layers = [0, 1]\nhead_input = \"token\"\nprompt = { param = \"nonlinear\", nonlinear_embed = 8, gate = \"sigmoid\" }\nlora = { rank = 2 }",
        // Each prompt parameterisation and gate of issue #18 once (the goldens cover the direct prefixes).
        "hide-prompt" => "layers = [0, 1]\nlength = 2\ntii_epochs = 1\ntii_align_epochs = 1\nalign_epochs = 1\nstatistics = \"variance\"\nprompt = { param = \"nonlinear\", gate = \"zero-init\" }",
        // Task-specific LoRA (HiDe-PET's k, v and multi-centroid statistics) on two of the three blocks,
        // with VAPT's adaptive prompts beside it (so the loop has every parameterisation).
        "hide-lora" => "tii_epochs = 1\ntii_align_epochs = 1\nalign_epochs = 1\nn_centroids = 1\nlora = { layers = [0, 1] }\ntii_lora = { layers = [2] }\nlayers = [0, 1, 2]\nlength = 2\nprompt = { param = \"adaptive\", adaptive_hidden = 4 }",
        "norga" => "layers = [0, 1]\nlength = 2\ntii_epochs = 1\ntii_align_epochs = 1\nalign_epochs = 1\nstatistics = \"variance\"\nprompt = { param = \"reparam-mlp\", gate = \"sigmoid\" }",
        "wave-cre" => "layers = [0, 1]\npool_size = 3\ntop_k = 2\ntii_align_epochs = 1\nalign_epochs = 1\nreplay_samples = 8\nhead_hidden = [8]\ntii_net = { classifier = [8] }\nstatistics = \"variance\"\nprompt = { param = \"frozen-projection\", gate = \"zero-init-query\" }",
        "epi" => "layers = [0, 1, 2]\nlength = 2\nprompt = { param = \"reparam-linear\", generator = \"per-task\" }\nlora = { rank = 2, targets = [\"v\", \"out\"] }",
        "vpt-nsp" => "length = 3",
        "aper" | "ease" | "fecam-pilot" => "ffn_num = 8",
        "ranpac" => "ffn_num = 8\nprojection = 64",
        "slca" => "ca_epochs = 1\nsamples_per_class = 8",
        _ => "",
    }
}

fn config(method: &str, results_dir: &Path) -> RunConfig {
    let params = params(method).replace('\n', ", ");
    let text = common::fixture_config("fixture", method, &params, 1, 16, 0.05, results_dir, "");
    let cfg: RunConfig = toml::from_str(&text).unwrap();
    cfg.validate().unwrap();
    cfg
}

/// Tests that train hold this: libtorch's generator is global, and a method
/// drawing from it (adapter dropout, pseudo-features) in a parallel test
/// would change what another test's run draws.
static TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn training() -> std::sync::MutexGuard<'static, ()> {
    TRAINING.lock().unwrap_or_else(|e| e.into_inner())
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("promptcl-e2e-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn every_registered_method_runs_end_to_end() {
    let _one_at_a_time = training();
    let out = tmp("all");
    for name in promptcl_learner::registry::names() {
        let cfg = config(name, &out);
        let t0 = std::time::Instant::now();
        let dir = run::run(&cfg, 7, None, run::RunOptions { quiet: true, ..Default::default() }).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        eprintln!("{name}: {:.1}s", t0.elapsed().as_secs_f64());
        let m = results::load_metrics(&dir).unwrap();
        assert_eq!(m.matrix.num_tasks(), 5, "{name}");
        for (i, row) in m.matrix.rows.iter().enumerate() {
            assert_eq!(row.len(), i + 1);
            assert!(row.iter().all(|a| (0.0..=100.0).contains(a)), "{name}: {row:?}");
        }
        let s = m.summary.unwrap();
        assert!((0.0..=100.0).contains(&s.final_accuracy));
        let state: results::State = results::read_json(&dir.join(results::STATE)).unwrap();
        assert!(state.finished);
        for f in [results::CONFIG, results::ENV, results::MATRIX_CSV, results::LOG] {
            assert!(dir.join(f).is_file(), "{name}: {f} missing");
        }
        // The resolved config reloads and validates.
        RunConfig::load(&dir.join(results::CONFIG)).unwrap();
        promptcl_harness::report(&dir, true).unwrap();
        assert!(dir.join("forgetting.png").is_file() && dir.join("forgetting.svg").is_file());
        let log = std::fs::read_to_string(dir.join(results::LOG)).unwrap();
        let epochs: Vec<serde_json::Value> =
            log.lines().map(|l| serde_json::from_str(l).unwrap()).filter(|v: &serde_json::Value| v.get("epoch").is_some()).collect();
        if !["simplecil", "fecam"].contains(&name) {
            // HiDe-style methods: `tii` + `prompt` in task 1, then `tii`, `tii-align`, `prompt`, `align` (one epoch each);
            // APER adapts in task 1 only.
            let want = match name {
                "hide-prompt" | "norga" | "hide-lora" => 2 + 4 * 4,
                // WAVE-CRE: `prompt`, `tii-align`, `align` in every task.
                "wave-cre" => 3 * 5,
                "aper" | "ranpac" | "fecam-pilot" => 1,
                // `train` in every task, `align` from the second.
                "slca" => 1 + 4 * 2,
                _ => 5,
            };
            assert_eq!(epochs.len(), want, "{name}: one log line per epoch of every stage and task");
            assert!(
                epochs.iter().all(|e| e["loss"].as_f64().unwrap().is_finite() && e["train_accuracy"].is_number() && e["stage"].is_string()),
                "{name}: {log}"
            );
        }
        if name == "dualprompt" {
            assert!(m.matrix.task_id_accuracy.iter().all(Option::is_some), "DualPrompt predicts task ids");
        }
    }
    // compare over all of them
    let dirs = promptcl_harness::run_dirs(std::slice::from_ref(&out));
    assert_eq!(dirs.len(), promptcl_learner::registry::METHODS.len());
    let metrics: Vec<_> = dirs.iter().map(|d| results::load_metrics(d).unwrap()).collect();
    let rows = promptcl_harness::compare::rows(&metrics);
    assert_eq!(rows.len(), promptcl_learner::registry::METHODS.len());
    let md = promptcl_harness::compare::markdown(&rows);
    assert!(md.contains("coda-prompt") && md.contains("| ffm |"));
    std::fs::remove_dir_all(out).ok();
}

/// APER's and RanPAC's adapters are trained in task 1 only and must come
/// back from the checkpoint, as RanPAC's Gram statistics; DualPrompt's
/// per-task prompts, EASE's per-task adapters and prototypes, and
/// VPT-NSP's statistics and projections too, NoRGa's and CODA-Prompt's
/// generated prefixes (sealed per task, with their flags), and L2P's shared
/// generated pool with its gate and LoRA.
#[test]
fn resumed_run_matches_uninterrupted_bit_for_bit() {
    let _one_at_a_time = training();
    let out = tmp("resume");
    for method in ["dualprompt", "aper", "ranpac", "slca", "ease", "vpt-nsp", "norga", "coda-prompt", "l2p"] {
        let cfg = config(method, &out);
        let full = run::run(&cfg, 7, None, run::RunOptions { quiet: true, ..Default::default() }).unwrap();
        let part = run::run(&cfg, 7, None, run::RunOptions { quiet: true, stop_after_tasks: Some(2) }).unwrap();
        let state: results::State = results::read_json(&part.join(results::STATE)).unwrap();
        assert_eq!((state.completed_tasks, state.finished), (2, false));
        let resumed = run::run(&cfg, 7, Some(&part), run::RunOptions { quiet: true, ..Default::default() }).unwrap();
        assert_eq!(resumed, part);
        let (a, b) = (results::load_metrics(&full).unwrap(), results::load_metrics(&resumed).unwrap());
        assert_eq!(a.matrix, b.matrix, "{method}: resumed accuracy matrix differs");
    }
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn unknown_method_and_bad_keys_are_config_errors() {
    let out = tmp("bad");
    let mut cfg = config("l2p", &out);
    cfg.method.name = "l3p".into();
    let e = format!("{:#}", cfg.validate().unwrap_err());
    assert!(e.contains("unknown method `l3p`") && e.contains("dualprompt"), "{e}");
    let mut cfg = config("l2p", &out);
    cfg.method.params.insert("pool_sise".into(), toml::Value::Integer(3));
    let e = format!("{:#}", cfg.validate().unwrap_err());
    assert!(e.contains("pool_sise"), "{e}");
    std::fs::remove_dir_all(out).ok();
}

/// A RanPAC projection too wide for the machine is an error naming the
/// parameter before the dataset is read (here it does not even exist).
#[test]
fn a_random_projection_that_does_not_fit_fails_before_any_data_is_read() {
    let mut cfg = RunConfig::parse(&repo().join("benchmarks/configs/cifar100_ranpac.toml")).unwrap();
    cfg.method.params.insert("projection".into(), toml::Value::Integer(10_000_000));
    cfg.stream.dataset = toml::from_str("kind = \"cifar100\"\nroot = \"/nonexistent/cifar\"").unwrap();
    let e = format!("{:#}", run::prepare(&cfg, 1).err().unwrap());
    assert!(e.contains("projection = 10000000") && e.contains("lower `projection`") && !e.contains("dataset"), "{e}");
    cfg.method.params.insert("projection".into(), toml::Value::Integer(100));
    let e = format!("{:#}", run::prepare(&cfg, 1).err().unwrap());
    assert!(e.contains("loading the dataset"), "a projection that fits gets as far as the data: {e}");
}

/// The paper configs parse and everything but their data and weight paths
/// validates (those exist only on users' machines).
#[test]
fn benchmark_configs_are_valid() {
    let dir = repo().join("benchmarks/configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let cfg: RunConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.optim.validate().unwrap();
        cfg.stream.transform.validate().unwrap();
        let text = cfg.stream.dataset.tokenizer().is_some();
        let mut model = cfg.model.clone();
        // The preset names the encoder; its config.json lives outside the repo.
        model.config = None;
        model.encoder(text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        promptcl_learner::registry::check(&cfg.method.name, &cfg.method.params).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Some(classes) = cfg.stream.dataset.known_num_classes() {
            promptcl_stream::TaskStream::new(classes, &cfg.stream.order, &cfg.stream.split()).unwrap();
        }
        n += 1;
    }
    assert!(n >= 9, "only {n} configs");
}

/// HierC's two trees cover their datasets' classes exactly once, and the
/// pinned class orders bring the classes HierC's taxonomy has after task 1
/// (taxanomy/imgR/order1 T1), so order and tree index the same classes.
#[test]
fn hierc_trees_cover_their_datasets_and_match_the_pinned_orders() {
    use promptcl_stream::{ClassOrder, LabelTree};
    // Parsed, not loaded: the data and weights exist only on users' machines.
    let load = |name: &str| RunConfig::parse(&repo().join("benchmarks/configs").join(name)).unwrap();
    // ImageNet-R: the classes are the wnid folders, sorted (ImageFolder's indices).
    let cfg = load("imr_hierc.toml");
    let promptcl_stream::DatasetConfig::ImagenetR { hierarchy: Some(tree), .. } = &cfg.stream.dataset else { panic!("no tree") };
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(tree).unwrap()).unwrap();
    let aliases = file["aliases"].as_object().unwrap();
    let mut wnids: Vec<String> = aliases.values().map(|v| v.as_str().unwrap().to_string()).collect();
    wnids.sort();
    wnids.dedup();
    assert_eq!(wnids.len(), 200);
    let t = LabelTree::from_json(tree, &wnids).unwrap();
    assert_eq!(t.num_groups(), 21);
    let order = cfg.stream.order.resolve(200).unwrap();
    let label_of: std::collections::HashMap<&str, &str> = aliases.iter().map(|(k, v)| (v.as_str().unwrap(), k.as_str())).collect();
    let mut first: Vec<&str> = order[..20].iter().map(|&c| label_of[wnids[c].as_str()]).collect();
    first.sort();
    let mut t1 = vec![
        "pembroke_welsh_corgi",
        "pomeranian",
        "italian_greyhound",
        "whippet",
        "skunk",
        "tiger",
        "iguana",
        "hammerhead",
        "puffer_fish",
        "stingray",
        "hermit_crab",
        "Granny_Smith",
        "pizza",
        "beer_glass",
        "candle",
        "canoe",
        "fire_engine",
        "tennis_ball",
        "sandal",
        "scarf",
    ];
    t1.sort();
    assert_eq!(first, t1);
    // CIFAR-100: fine label names from the shared hierarchy file when present.
    let cfg = load("cifar100_hierc.toml");
    assert!(matches!(cfg.stream.order, ClassOrder::Explicit(_)));
    let path = repo().join("../shared/data/cifar100-hierarchy/cifar100_hierarchy.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("skipped the CIFAR-100 half: {} not present", path.display());
        return;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names: Vec<String> = v["fine_label_names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
    let promptcl_stream::DatasetConfig::Cifar100 { hierarchy: Some(tree), .. } = &cfg.stream.dataset else { panic!("no tree") };
    LabelTree::from_json(tree, &names).unwrap();
}

/// `regularizers = [{ kind = "hierarchical-ot" }]` composes with methods from
/// the config; with the HierC tree for CIFAR-100 and the Mahalanobis evaluation.
#[test]
fn hierarchical_ot_regularizer_composes_with_methods_from_config() {
    let _one_at_a_time = training();
    let out = tmp("hierc");
    let tree = repo().join("benchmarks/trees/cifar100_hierc_leaf_groups.json");
    let reg = "regularizers = [{ kind = \"hierarchical-ot\", statistics = \"variance\", ot_samples = 4, old_samples = 8, mahalanobis_eval = true }]";
    for (method, params) in [
        ("l2p", format!("pool_size = 6, top_k = 2, length = 3, head_input = \"token\", {reg}")),
        ("hide-prompt", format!("{}, {reg}", params("hide-prompt").replace('\n', ", "))),
    ] {
        let text = common::fixture_config("hierc", method, &params, 1, 16, 0.05, &out, "").replace(
            &format!("root = \"{}\" }}", repo().join("crates/stream/tests/fixtures").display()),
            &format!("root = \"{}\", hierarchy = \"{}\" }}", repo().join("crates/stream/tests/fixtures").display(), tree.display()),
        );
        assert!(text.contains("hierarchy"), "the fixture config changed shape");
        let cfg: RunConfig = toml::from_str(&text).unwrap();
        cfg.validate().unwrap();
        let dir = run::run(&cfg, 7, None, run::RunOptions { quiet: true, ..Default::default() }).unwrap_or_else(|e| panic!("{method}: {e:#}"));
        let m = results::load_metrics(&dir).unwrap();
        assert_eq!(m.matrix.num_tasks(), 5, "{method}");
    }
    std::fs::remove_dir_all(out).ok();
}

/// Split list files, like the dataset root, are relative to the config file
/// (CODA's fixed ImageNet-R split), and the pinned CODA order is a permutation.
#[test]
fn split_lists_resolve_beside_the_config() {
    let dir = repo().join("benchmarks/configs");
    let cfg = RunConfig::parse(&dir.join("imr_coda_prompt.toml")).unwrap();
    let promptcl_stream::DatasetConfig::ImagenetR { root, split: promptcl_stream::FolderSplit::Lists { train, test }, .. } = &cfg.stream.dataset
    else {
        panic!("CODA's ImageNet-R config reads its fixed lists")
    };
    assert_eq!(train, &dir.join("../../data/imagenet-r/coda_train.txt"));
    assert_eq!(test, &dir.join("../../data/imagenet-r/coda_test.txt"));
    assert_eq!(root, &dir.join("../../data/imagenet-r"));
    let mut order = cfg.stream.order.resolve(200).unwrap();
    order.sort();
    assert_eq!(order, (0..200).collect::<Vec<_>>());
}

/// HiDe-Prompt with VAPT's adaptive prompts per task (`prompt.param =
/// "adaptive"`, the one parameterisation the registry loop's entries leave
/// out): all five tasks end to end, and a run stopped after two tasks resumes
/// to the same matrix (every task's expert comes back from the checkpoint).
#[test]
fn adaptive_prompts_run_end_to_end_and_resume_bit_for_bit() {
    let _one_at_a_time = training();
    let out = tmp("adaptive");
    let params = "layers = [0, 1, 2], length = 2, tii_epochs = 1, tii_align_epochs = 1, align_epochs = 1, statistics = \"variance\", prompt = { param = \"adaptive\", adaptive_hidden = 4 }";
    let text = common::fixture_config("fixture", "hide-prompt", params, 1, 16, 0.05, &out, "");
    let cfg: RunConfig = toml::from_str(&text).unwrap();
    cfg.validate().unwrap();
    let full = run::run(&cfg, 7, None, run::RunOptions { quiet: true, ..Default::default() }).unwrap();
    let part = run::run(&cfg, 7, None, run::RunOptions { quiet: true, stop_after_tasks: Some(2) }).unwrap();
    let resumed = run::run(&cfg, 7, Some(&part), run::RunOptions { quiet: true, ..Default::default() }).unwrap();
    let (a, b) = (results::load_metrics(&full).unwrap(), results::load_metrics(&resumed).unwrap());
    assert_eq!(a.matrix.num_tasks(), 5);
    assert_eq!(a.matrix, b.matrix, "resumed accuracy matrix differs");
    std::fs::remove_dir_all(out).ok();
}
