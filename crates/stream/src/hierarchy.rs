//! Label hierarchies: classes (leaves) grouped under parents, e.g. CIFAR-100's
//! 20 superclasses, or a user-given JSON tree for any dataset.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Result, StreamError};

/// A two-level tree: each class belongs to exactly one group.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelTree {
    pub group_names: Vec<String>,
    /// `parent[class]` = group index.
    pub parent: Vec<usize>,
}

/// CIFAR-100 fine class (alphabetical index, as in `meta`) → superclass
/// index; the dataset's own `coarse_labels` define it, this copy lets
/// configs and tests use it without the data.
pub const CIFAR100_SUPERCLASS: [usize; 100] = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19,
    8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19,
    2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
];

pub const CIFAR100_SUPERCLASS_NAMES: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeFile {
    /// group name → member class names
    groups: std::collections::BTreeMap<String, Vec<String>>,
    /// label used in `groups` → the dataset's class name, so that trees over
    /// opaque folder names (ImageNet-R's wnids) stay readable.
    #[serde(default)]
    aliases: std::collections::BTreeMap<String, String>,
}

impl LabelTree {
    pub fn from_parents(parent: &[usize], group_names: Vec<String>) -> std::result::Result<Self, String> {
        if let Some((c, &g)) = parent.iter().enumerate().find(|(_, &g)| g >= group_names.len()) {
            return Err(format!("class {c} has group {g}, but there are {} groups", group_names.len()));
        }
        Ok(Self { group_names, parent: parent.to_vec() })
    }

    /// CIFAR-100's 20 superclasses.
    pub fn cifar100() -> Self {
        Self { group_names: CIFAR100_SUPERCLASS_NAMES.iter().map(|s| s.to_string()).collect(), parent: CIFAR100_SUPERCLASS.to_vec() }
    }

    /// Reads `{"groups": {"group name": ["class name", ...], ...}}` (with an
    /// optional `"aliases": {"label": "class name"}`) and checks that every
    /// class of the dataset appears exactly once.
    pub fn from_json(path: &Path, class_names: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| StreamError::io(path, e))?;
        let file: TreeFile = serde_json::from_str(&text).map_err(|e| StreamError::format(path, format!("bad taxonomy JSON: {e}")))?;
        let index: HashMap<&str, usize> = class_names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        for (label, class) in &file.aliases {
            if !index.contains_key(class.as_str()) {
                return Err(StreamError::format(path, format!("alias `{label}` names `{class}`, which is not a class of the dataset")));
            }
        }
        let mut parent = vec![usize::MAX; class_names.len()];
        let mut group_names = Vec::new();
        for (g, (name, members)) in file.groups.into_iter().enumerate() {
            group_names.push(name);
            for m in &members {
                let class = file.aliases.get(m).unwrap_or(m);
                let Some(&c) = index.get(class.as_str()) else {
                    return Err(StreamError::format(path, format!("group `{}` lists `{m}`, which is not a class of the dataset", group_names[g])));
                };
                if parent[c] != usize::MAX {
                    return Err(StreamError::format(
                        path,
                        format!("class `{m}` appears twice (in `{}` and `{}`)", group_names[parent[c]], group_names[g]),
                    ));
                }
                parent[c] = g;
            }
        }
        if let Some(c) = parent.iter().position(|&p| p == usize::MAX) {
            return Err(StreamError::format(path, format!("class `{}` is in no group", class_names[c])));
        }
        Ok(Self { group_names, parent })
    }

    pub fn num_groups(&self) -> usize {
        self.group_names.len()
    }

    /// The groups restricted to `seen` classes, in group order, dropping empty
    /// ones: the tree as it stands after the tasks that introduced `seen`.
    pub fn restricted_to(&self, seen: &[usize]) -> Vec<(usize, Vec<usize>)> {
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); self.num_groups()];
        for &c in seen {
            groups[self.parent[c]].push(c);
        }
        groups.into_iter().enumerate().filter(|(_, g)| !g.is_empty()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cifar100_groups_have_five_classes_each() {
        let t = LabelTree::cifar100();
        let mut counts = [0; 20];
        for &g in &t.parent {
            counts[g] += 1;
        }
        assert_eq!(counts, [5; 20]);
    }

    #[test]
    fn tree_grows_with_the_seen_classes() {
        let t = LabelTree::cifar100();
        // Task 1 sees apple(0), aquarium_fish(1), baby(2); task 2 adds bear(3), beaver(4).
        assert_eq!(t.restricted_to(&[0, 1, 2]), vec![(1, vec![1]), (4, vec![0]), (14, vec![2])]);
        let grown = t.restricted_to(&[0, 1, 2, 3, 4]);
        assert_eq!(grown.len(), 5);
        assert!(grown.contains(&(0, vec![4])) && grown.contains(&(8, vec![3])));
    }

    /// Checks the built-in table against the real hierarchy file when the
    /// shared data is present.
    #[test]
    fn builtin_cifar100_table_matches_shared_hierarchy() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/cifar100-hierarchy/cifar100_hierarchy.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            eprintln!("skipped: {} not present", path.display());
            return;
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let f2c: Vec<usize> = v["fine_to_coarse"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
        assert_eq!(f2c, CIFAR100_SUPERCLASS);
    }
}
