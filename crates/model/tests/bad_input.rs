//! Bad weights and bad inputs are errors that name the file / key / shape, never panics.

mod common;

use common::{fixture, tiny_cfg};
use promptcl_model::{frozen_vit, weights::read_safetensors, ModelError, Precision, Prompts, ViTConfig};
use tch::{Device, Kind, Tensor};

fn load(cfg: &ViTConfig, path: &std::path::Path) -> Result<(), ModelError> {
    frozen_vit(cfg, Some(path), Device::Cpu, Precision::F32).map(|_| ())
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("promptcl-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Writes the fixture checkpoint with `edit` applied to its tensor list.
fn edited(name: &str, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> std::path::PathBuf {
    let mut tensors: Vec<(String, Tensor)> = read_safetensors(&fixture("vit_tiny_test.safetensors")).unwrap().into_iter().collect();
    edit(&mut tensors);
    let path = tmp(name);
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

#[test]
fn missing_file_names_the_path() {
    let e = load(&tiny_cfg(), std::path::Path::new("/nonexistent/vit.safetensors")).unwrap_err();
    assert!(matches!(e, ModelError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/vit.safetensors"), "{e}");
}

#[test]
fn corrupt_file_is_a_clear_error() {
    let path = tmp("garbage.safetensors");
    std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    let e = load(&tiny_cfg(), &path).unwrap_err();
    assert!(matches!(e, ModelError::BadFile { .. }), "{e}");
    assert!(e.to_string().contains("garbage.safetensors"));
    let truncated = tmp("truncated.safetensors");
    let bytes = std::fs::read(fixture("vit_tiny_test.safetensors")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(load(&tiny_cfg(), &truncated).unwrap_err(), ModelError::BadFile { .. }));
}

#[test]
fn wrong_shape_names_key_and_both_shapes() {
    let cfg = ViTConfig { mlp_ratio: 2.0, ..tiny_cfg() };
    let e = load(&cfg, &fixture("vit_tiny_test.safetensors")).unwrap_err().to_string();
    assert!(e.contains("blocks.0.mlp.fc1.bias") && e.contains("[256]") && e.contains("[128]"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let path = edited("missing.safetensors", |t| t.retain(|(k, _)| k != "blocks.2.attn.proj.weight"));
    let e = load(&tiny_cfg(), &path).unwrap_err();
    assert!(matches!(&e, ModelError::MissingTensor { key, .. } if key == "blocks.2.attn.proj.weight"), "{e}");
}

#[test]
fn unexpected_tensor_is_named_but_head_is_ignored_without_head() {
    let path = edited("extra.safetensors", |t| t.push(("blocks.0.ls1.gamma".into(), Tensor::ones([64], (Kind::Float, Device::Cpu)))));
    let e = load(&tiny_cfg(), &path).unwrap_err().to_string();
    assert!(e.contains("blocks.0.ls1.gamma"), "{e}");
    // A checkpoint with a classifier loads into a head-less backbone.
    load(&ViTConfig { num_classes: 0, ..tiny_cfg() }, &fixture("vit_tiny_test.safetensors")).unwrap();
}

#[test]
fn integer_weights_are_rejected() {
    let path = edited("int.safetensors", |t| {
        for (k, v) in t.iter_mut() {
            if k == "norm.bias" {
                *v = v.to_kind(Kind::Int);
            }
        }
    });
    let e = load(&tiny_cfg(), &path).unwrap_err();
    assert!(matches!(&e, ModelError::BadDtype { key, .. } if key == "norm.bias"), "{e}");
}

#[test]
fn half_precision_checkpoints_load() {
    let path = edited("f16.safetensors", |t| {
        for (_, v) in t.iter_mut() {
            *v = v.to_kind(Kind::Half);
        }
    });
    load(&tiny_cfg(), &path).unwrap();
}

#[test]
fn bad_images_and_prompts_are_errors() {
    let (_vs, vit) = frozen_vit(&tiny_cfg(), Some(&fixture("vit_tiny_test.safetensors")), Device::Cpu, Precision::F32).unwrap();
    let opts = (Kind::Float, Device::Cpu);
    let cases = [
        (Tensor::zeros([2, 3, 30, 32], opts), "multiple of the patch size"),
        (Tensor::zeros([2, 1, 32, 32], opts), "images must be"),
        (Tensor::zeros([3, 32, 32], opts), "images must be"),
        (Tensor::zeros([2, 3, 32, 32], (Kind::Uint8, Device::Cpu)), "float tensor"),
    ];
    for (x, msg) in cases {
        let e = vit.forward(&x, &Prompts::none()).unwrap_err().to_string();
        assert!(e.contains(msg), "{e}");
    }
    let x = Tensor::zeros([2, 3, 32, 32], opts);
    let bad_tokens = Tensor::zeros([1, 4, 63], opts);
    let e = vit.forward(&x, &Prompts::none().with_tokens(0, &bad_tokens)).unwrap_err().to_string();
    assert!(e.contains("layer 0") && e.contains("[1, 4, 63]"), "{e}");
    let k = Tensor::zeros([1, 4, 5, 16], opts);
    let e = vit.forward(&x, &Prompts::none().with_prefix(3, &k, &k)).unwrap_err().to_string();
    assert!(e.contains("layer 3") && e.contains("3 layers"), "{e}");
    let wrong_heads = Tensor::zeros([1, 2, 5, 32], opts);
    let e = vit.forward(&x, &Prompts::none().with_prefix(1, &wrong_heads, &wrong_heads)).unwrap_err();
    assert!(e.to_string().contains("prefix key"), "{e}");
    let v3 = Tensor::zeros([1, 4, 3, 16], opts);
    let e = vit.forward(&x, &Prompts::none().with_prefix(1, &k, &v3)).unwrap_err();
    assert!(e.to_string().contains("length"), "{e}");
}

#[test]
fn invalid_config_is_rejected_before_any_tensor() {
    let cfg = ViTConfig { img_size: 33, ..tiny_cfg() };
    let e = frozen_vit(&cfg, None, Device::Cpu, Precision::F32).unwrap_err();
    assert!(matches!(e, ModelError::Config(_)), "{e}");
}

/// A token generator gets the layer's input without the earlier prompt
/// tokens and the patch grid; what it returns replaces them. A wrong shape
/// from it, prompt tokens and a generator on one layer, or a generator on
/// BERT are errors naming the layer.
#[test]
fn token_generators_see_the_clean_input_and_misuse_is_an_error() {
    /// Records (input shape, grid) per call; returns `.1` patch tokens.
    type Seen = std::cell::RefCell<Vec<(Vec<i64>, (i64, i64))>>;
    struct Echo(Seen, i64);
    impl promptcl_model::TokenGenerator for Echo {
        fn tokens(&self, x: &Tensor, grid: (i64, i64)) -> promptcl_model::Result<Tensor> {
            self.0.borrow_mut().push((x.size(), grid));
            Ok(x.narrow(1, 1, self.1))
        }
    }
    let (_vs, m) = frozen_vit(&tiny_cfg(), Some(&fixture("vit_tiny_test.safetensors")), Device::Cpu, Precision::F32).unwrap();
    let x = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let first = Tensor::zeros([1, 3, 64], (Kind::Float, Device::Cpu));
    let echo = Echo(Default::default(), 2);
    let out = m.forward(&x, &Prompts::none().with_tokens(0, &first).with_token_generator(2, &echo)).unwrap();
    assert_eq!(echo.0.borrow().as_slice(), &[(vec![2, 17, 64], (4, 4))], "[CLS; 16 patches], without the 3 tokens of block 0");
    assert_eq!(out.prompt_tokens.unwrap().size(), [2, 2, 64], "the generated tokens replaced block 0's");

    let bad = Echo(Default::default(), 0);
    let e = m.forward(&x, &Prompts::none().with_token_generator(1, &bad)).unwrap_err().to_string();
    assert!(e.contains("layer 1: the token generator gave [2, 0, 64]"), "{e}");
    let e = m.forward(&x, &Prompts::none().with_tokens(1, &first).with_token_generator(1, &echo)).unwrap_err().to_string();
    assert!(e.contains("layer 1: both prompt tokens and a token generator"), "{e}");
}
