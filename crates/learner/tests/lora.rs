//! Task-specific LoRA ([`promptcl_learner::parts::lora`]): the initialisations
//! (B zeros; A within PEFT's or HiDe-PET's Kaiming bound), the momentum mix at
//! the end of a task as HiDe-PET computes it (on A and B separately, with the
//! mean of the earlier tasks'), the copy into the next task, and the
//! per-sample gather matching each task's own update.

use promptcl_learner::parts::lora::{with_updates, LoraInit, LoraSpec, TaskLora};
use promptcl_learner::{Inputs, OptimConfig};
use promptcl_model::{LoraTarget, Prompts};
use tch::{nn, Device, Kind, Tensor};

mod common;

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

#[test]
fn initialisation_mix_copy_and_routing() {
    let ctx = common::vit_ctx(3, 2, OptimConfig::default(), None);
    for (init, bound) in [(LoraInit::Peft, 1.0 / 8.0), (LoraInit::HidePet, 0.5)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let spec = LoraSpec { rank: 4, a_init: init, ..Default::default() };
        let lora = TaskLora::new(&vs.root(), &ctx, &spec, 1).unwrap();
        let a = &vs.variables()["lora.a.0"];
        assert_eq!(a.size(), [6, 4, 64], "3 blocks × (q, v)");
        assert!(max_abs(a) <= bound && max_abs(a) > 0.8 * bound, "{init:?}: |A| ≤ {bound}, got {}", max_abs(a));
        assert_eq!(max_abs(&vs.variables()["lora.b.0"]), 0.0);
        drop(lora);
    }

    let vs = nn::VarStore::new(Device::Cpu);
    let spec = LoraSpec {
        rank: 2,
        targets: vec![LoraTarget::K, LoraTarget::Out],
        layers: vec![1],
        init_from_previous: true,
        momentum: 0.25,
        ..Default::default()
    };
    let mut lora = TaskLora::new(&vs.root(), &ctx, &spec, 1).unwrap();
    let v = |n: &str| vs.variables()[n].shallow_clone();
    let set = |n: &str, seed: i64| {
        tch::manual_seed(seed);
        tch::no_grad(|| v(n).copy_(&Tensor::randn(v(n).size(), (Kind::Float, Device::Cpu))));
    };
    lora.begin_task(0);
    set("lora.a.0", 1);
    set("lora.b.0", 2);
    lora.seal(0);
    lora.begin_task(1);
    assert!(v("lora.a.1").equal(&v("lora.a.0")) && v("lora.b.1").equal(&v("lora.b.0")), "task 1 starts as task 0");
    assert!(v("lora.b.1").requires_grad() && !v("lora.b.0").requires_grad());
    set("lora.a.1", 3);
    set("lora.b.1", 4);
    let (a1, b1) = (v("lora.a.1").copy(), v("lora.b.1").copy());
    lora.seal(1);
    for (name, own, earlier) in [("a", &a1, v("lora.a.0")), ("b", &b1, v("lora.b.0"))] {
        let want = own * 0.75 + earlier * 0.25;
        assert!(max_abs(&(v(&format!("lora.{name}.1")) - want)) < 1e-6, "{name}: (1 − m)·own + m·mean(earlier)");
    }

    // Per-sample factors give each sample its own task's update.
    let x = Inputs::Images(Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)));
    let routed = lora.of_samples(&Tensor::from_slice(&[1i64, 0]));
    let both = ctx.backbone.forward(&x, &with_updates(Prompts::none(), &routed)).unwrap().feature;
    for (i, t) in [(0i64, 1usize), (1, 0)] {
        let own = lora.of_task(t);
        let alone = ctx.backbone.forward(&x, &with_updates(Prompts::none(), &own)).unwrap().feature;
        assert!(max_abs(&(both.get(i) - alone.get(i))) < 1e-5, "sample {i} (task {t})");
    }
    let frozen = ctx.backbone.forward(&x, &Prompts::none()).unwrap().feature;
    assert!(max_abs(&(both - frozen)) > 1e-3, "the updates act");
}
