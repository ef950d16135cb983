//! HierC's losses against the official functions (PyTorch fixture from
//! data-scripts/gen_hierc_fixtures.py), values and gradients.

use std::collections::HashMap;
use std::path::PathBuf;

use promptcl_learner::hierc::{cluster_loss, subgroup_supcon, supcon, HiercParams};
use promptcl_learner::ot::affinity;
use tch::{Kind, Tensor};

fn golden() -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hierc_golden.safetensors");
    Tensor::read_safetensors(path).unwrap().into_iter().collect()
}

fn close(a: &Tensor, b: &Tensor, what: &str) {
    let err = (a - b).abs().max().double_value(&[]);
    assert!(err < 1e-5, "{what}: {err:e}");
}

#[test]
fn supcon_matches_the_official_loss_with_and_without_gamma() {
    let g = golden();
    let labels = &g["labels"];
    let gamma = affinity(&g["w"], 0.5);
    let groups = vec![vec![0, 1, 2], vec![3, 4], vec![5, 6]];
    type Loss<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;
    let cases: [(&str, Loss); 3] = [
        ("plain", Box::new(|f: &Tensor| supcon(f, labels, 0.1, None))),
        ("weighted", Box::new(|f: &Tensor| supcon(f, labels, 0.1, Some(&gamma)))),
        ("subgroup", Box::new(|f: &Tensor| subgroup_supcon(f, labels, &groups, 0.1, Some(&gamma)))),
    ];
    for (name, loss) in cases {
        let f = g["features"].copy().set_requires_grad(true);
        let l = loss(&f);
        close(&l, &g[name], name);
        l.backward();
        close(&f.grad(), &g[&format!("grad_{name}")], &format!("grad {name}"));
    }
}

#[test]
fn gamma_of_one_changes_nothing_and_no_positives_gives_zero() {
    let g = golden();
    let f = g["features"].to_kind(Kind::Float);
    let ones = Tensor::ones([7, 7], (Kind::Float, tch::Device::Cpu));
    close(&supcon(&f, &g["labels"], 0.1, Some(&ones)), &supcon(&f, &g["labels"], 0.1, None), "Γ = 1");
    let distinct = Tensor::arange(14, (Kind::Int64, tch::Device::Cpu));
    assert_eq!(supcon(&f, &distinct, 0.1, None).double_value(&[]), 0.0);
}

#[test]
fn cluster_loss_combines_global_and_group_terms_over_joined_features() {
    let g = golden();
    let f = g["features"].to_kind(Kind::Float);
    let y = &g["labels"];
    let (bf, by) = (f.narrow(0, 0, 6), y.narrow(0, 0, 6));
    let (of, oy) = (f.narrow(0, 6, 8), y.narrow(0, 6, 8));
    let groups = vec![vec![0, 1, 2], vec![3, 4], vec![5, 6]];
    let w = g["w"].to_kind(Kind::Float);
    let p = HiercParams { reg_glob: 0.3, reg_sub: 0.7, temperature: 0.1, delta: 0.5, ot: true };
    let got = cluster_loss(&bf, &by, Some((&of, &oy)), &groups, Some(&w), &p);
    let want = supcon(&f, y, 0.1, None) * 0.3 + subgroup_supcon(&f, y, &groups, 0.1, Some(&affinity(&w, 0.5))) * 0.7;
    close(&got, &want, "cluster loss");
}
