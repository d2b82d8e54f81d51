//! Shared by the property tests of every parser crate (`*/tests/parsers.rs`, included with
//! `#[path]`): the edits that turn a valid input into a damaged one, and the proptest
//! configuration (no failure files written into the source tree).

use proptest::prelude::*;

/// One edit of a valid input.
#[derive(Debug, Clone)]
pub enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

pub fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, x)| Edit::Flip(i, x)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1..64usize).prop_map(|(i, n)| Edit::Remove(i, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(edit, 1..4)
}

pub fn apply(valid: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = valid.to_vec();
    for e in edits {
        let n = v.len().max(1);
        match e {
            Edit::Flip(i, x) => {
                if !v.is_empty() {
                    v[i % n] ^= x;
                }
            }
            Edit::Insert(i, b) => {
                let at = i % (v.len() + 1);
                v.splice(at..at, b.iter().copied());
            }
            Edit::Remove(i, k) => {
                let at = i % n;
                let end = (at + k).min(v.len());
                if at < end {
                    v.drain(at..end);
                }
            }
            Edit::Truncate(i) => v.truncate(i % n),
        }
    }
    v
}

pub fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}
