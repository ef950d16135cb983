//! Class orders: which class arrives in which task.

use serde::{Deserialize, Serialize};

use crate::error::{Result, StreamError};
use crate::rng::SplitMix64;

/// `natural` (0, 1, 2, …), `{ seed = N }` (promptcl's documented shuffle, see
/// `rng`), `{ numpy_seed = N }` (numpy's legacy `np.random.seed(N);
/// np.random.permutation(n)`, PyCIL / LAMDA-PILOT / SLCA), or an explicit
/// list such as the orders other official RNGs produce
/// (`data-scripts/class_orders.py` prints them). A seed of 0 in a config
/// stands for the run's seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(untagged)]
pub enum ClassOrder {
    #[default]
    #[serde(with = "natural")]
    Natural,
    Seeded {
        seed: u64,
    },
    NumpyPermutation {
        numpy_seed: u32,
    },
    Explicit(Vec<usize>),
}

mod natural {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("natural")
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        let s = String::deserialize(d)?;
        if s == "natural" {
            Ok(())
        } else {
            Err(D::Error::custom(format!("unknown class order `{s}`")))
        }
    }
}

impl ClassOrder {
    /// The order as a permutation of `0..num_classes`.
    pub fn resolve(&self, num_classes: usize) -> Result<Vec<usize>> {
        match self {
            Self::Natural => Ok((0..num_classes).collect()),
            Self::Seeded { seed } => {
                let mut order: Vec<usize> = (0..num_classes).collect();
                SplitMix64::new(*seed).shuffle(&mut order);
                Ok(order)
            }
            Self::NumpyPermutation { numpy_seed } => Ok(crate::pyrandom::numpy_permutation(num_classes, *numpy_seed)),
            Self::Explicit(order) => {
                check_permutation(order, num_classes)?;
                Ok(order.clone())
            }
        }
    }
}

fn check_permutation(order: &[usize], n: usize) -> Result<()> {
    let mut seen = vec![false; n];
    for &c in order {
        if c >= n {
            return Err(StreamError::Config(format!("class order names class {c}, but the dataset has {n} classes (0..{n})")));
        }
        if std::mem::replace(&mut seen[c], true) {
            return Err(StreamError::Config(format!("class order lists class {c} twice")));
        }
    }
    if let Some(missing) = seen.iter().position(|s| !s) {
        return Err(StreamError::Config(format!("class order is not a permutation: {} of {n} classes given, class {missing} missing", order.len())));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_resolve_and_validate() {
        assert_eq!(ClassOrder::Natural.resolve(4).unwrap(), [0, 1, 2, 3]);
        let a = ClassOrder::Seeded { seed: 1 }.resolve(100).unwrap();
        assert_eq!(a, ClassOrder::Seeded { seed: 1 }.resolve(100).unwrap());
        assert_ne!(a, ClassOrder::Seeded { seed: 2 }.resolve(100).unwrap());
        assert_eq!(ClassOrder::Explicit(vec![2, 0, 1]).resolve(3).unwrap(), [2, 0, 1]);
        let e = ClassOrder::Explicit(vec![2, 0, 2]).resolve(3).unwrap_err().to_string();
        assert!(e.contains("class 2 twice"), "{e}");
        let e = ClassOrder::Explicit(vec![0, 1]).resolve(3).unwrap_err().to_string();
        assert!(e.contains("class 2 missing"), "{e}");
        assert!(ClassOrder::Explicit(vec![0, 1, 7]).resolve(3).is_err());
    }

    #[test]
    fn orders_deserialize_from_config_forms() {
        let n: ClassOrder = serde_json::from_str("\"natural\"").unwrap();
        assert_eq!(n, ClassOrder::Natural);
        let s: ClassOrder = serde_json::from_str(r#"{"seed": 42}"#).unwrap();
        assert_eq!(s, ClassOrder::Seeded { seed: 42 });
        let e: ClassOrder = serde_json::from_str("[1, 0]").unwrap();
        assert_eq!(e, ClassOrder::Explicit(vec![1, 0]));
        assert!(serde_json::from_str::<ClassOrder>("\"random\"").is_err());
    }
}
